"""Deleting audio: the periodic expiry pass and `speccyd purge` share one routine: rows first, then bytes."""

from __future__ import annotations

from collections.abc import Callable

from speccyd.storage.blobs import BlobStore
from speccyd.storage.database import Database
from speccyd.storage.records import FileRow, PurgeFilter

# Rows deleted per transaction: the write lock is held for milliseconds, so requests never queue behind it.
BATCH = 200
LAST_CLEANUP = "last_cleanup"
# Deletions are reported to syncing devices this long; a device away longer syncs its library from scratch.
TOMBSTONE_KEEP = 90 * 86400.0


async def purge(
    db: Database,
    blobs: BlobStore,
    what: PurgeFilter,
    now: float,
    progress: Callable[[list[FileRow]], None] | None = None,
) -> list[FileRow]:
    """Delete matching rows, then their audio: no row ever points at a missing file."""
    removed: list[FileRow] = []
    while True:
        rows = await db.delete_purge(what, now, BATCH)
        for row in rows:
            await blobs.remove(row.id, row.format)
        removed.extend(rows)
        if progress is not None:
            progress(rows)
        if len(rows) < BATCH:
            return removed


async def expire(db: Database, blobs: BlobStore, now: float) -> list[FileRow]:
    """One cleanup pass: remove expired audio, forget old deletions, and record when it ran."""
    removed = await purge(db, blobs, PurgeFilter(expired=True), now)
    await db.prune_tombstones(now - TOMBSTONE_KEEP)
    await db.set_meta(LAST_CLEANUP, repr(now))
    return removed
