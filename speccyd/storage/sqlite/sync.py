"""Device sync: a user's library changes in change order, with tombstones for what is gone.

The change sequence itself is kept by triggers (migration 2), so every writer records its changes.
"""

from __future__ import annotations

import sqlite3

from speccyd.storage.errors import CursorTooOld
from speccyd.storage.records import ChangePage, FileRow, Tombstone
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.files import FILE_COLUMNS
from speccyd.storage.sqlite.users import get_meta, set_meta

TOMBSTONES_PRUNED = "tombstones_pruned_seq"
_AGAIN = "sync again from the start (since=0)"


class SyncQueries(Engine):
    async def changes_since(self, user_id: str, since: int, limit: int) -> ChangePage:
        """Files changed and files removed after `since`, merged in change order, at most `limit` of both."""

        def changes(db: sqlite3.Connection) -> ChangePage:
            # One read transaction: both tables and the clock come from the same snapshot, even while the
            # CLI purges from another process.
            db.execute("BEGIN")
            try:
                clock = int(db.execute("SELECT seq FROM change_clock").fetchone()[0])
                pruned = int(get_meta(db, TOMBSTONES_PRUNED) or 0)
                if since > clock:
                    raise CursorTooOld(f"cursor {since} is ahead of this server's changes ({clock}); {_AGAIN}")
                if 0 < since < pruned:
                    raise CursorTooOld(f"cursor {since} is older than the kept deletions (from {pruned}); {_AGAIN}")
                files = [
                    (int(r[0]), FileRow(*r[1:]))
                    for r in db.execute(
                        f"SELECT seq, {FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND seq > ? "
                        "ORDER BY seq LIMIT ?",
                        (user_id, since, limit + 1),
                    )
                ]
                tombstones = [
                    Tombstone(*r)
                    for r in db.execute(
                        "SELECT seq, file_id, content_hash, reason, at FROM tombstones "
                        "WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                        (user_id, since, limit + 1),
                    )
                ]
            finally:
                db.execute("COMMIT")
            return _page(files, tombstones, since, limit)

        return await self.read(changes)

    async def prune_tombstones(self, before: float) -> int:
        """Forget deletions older than `before`; cursors from before them must sync from the start."""

        def prune(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT count(*), max(seq) FROM tombstones WHERE at < ?", (before,)).fetchone()
            if not row[0]:
                return 0
            db.execute("DELETE FROM tombstones WHERE seq <= ?", (row[1],))
            set_meta(db, TOMBSTONES_PRUNED, str(row[1]))
            return int(row[0])

        return await self.write(prune)


def _page(files: list[tuple[int, FileRow]], tombstones: list[Tombstone], since: int, limit: int) -> ChangePage:
    merged = sorted([seq for seq, _ in files] + [t.seq for t in tombstones])
    has_more = len(merged) > limit
    last = merged[limit - 1] if has_more else (merged[-1] if merged else since)
    return ChangePage(
        files=[(seq, row) for seq, row in files if seq <= last],
        tombstones=[t for t in tombstones if t.seq <= last],
        next_cursor=last,
        has_more=has_more,
    )
