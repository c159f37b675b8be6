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
# Raw usage rows summed into their days per transaction: each holds the write lock for a few milliseconds.
ROLL_UP_BATCH = 2000
DAY = 86400.0


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


async def roll_up_usage(db: Database, now: float) -> int:
    """Sum raw usage from before yesterday into whole days; raw rows stay for today and yesterday, which the
    daily quota and report windows of up to a day read exactly. How many rows were summed."""
    before = now - (now % DAY) - DAY
    moved = 0
    while True:
        batch = await db.roll_up_usage(before, ROLL_UP_BATCH)
        moved += batch
        if batch < ROLL_UP_BATCH:
            return moved


async def expire(db: Database, blobs: BlobStore, now: float) -> list[FileRow]:
    """One cleanup pass: remove expired audio, forget old deletions, roll usage up, record when it ran."""
    removed = await purge(db, blobs, PurgeFilter(expired=True), now)
    await db.prune_tombstones(now - TOMBSTONE_KEEP)
    await roll_up_usage(db, now)
    await db.set_meta(LAST_CLEANUP, repr(now))
    return removed
