"""Deleting audio: the periodic expiry sweep and `speccyd purge` share one routine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from speccyd.generation.runner import JobManager
from speccyd.storage.blobs import Blobs
from speccyd.storage.database import FileRow, PurgeFilter, Store

log = logging.getLogger(__name__)

# Rows deleted per transaction: the write lock is held for milliseconds, so requests never queue behind it.
BATCH = 200
LAST_CLEANUP = "last_cleanup"
# Deletions are reported to syncing devices this long; a device away longer syncs its library from scratch.
TOMBSTONE_KEEP = 90 * 86400.0


def purge(
    store: Store,
    blobs: Blobs,
    what: PurgeFilter,
    now: float,
    progress: Callable[[list[FileRow]], None] | None = None,
) -> list[FileRow]:
    """Delete matching rows, then their audio: no row ever points at a missing file."""
    removed: list[FileRow] = []
    while True:
        rows = store.delete_purge(what, now, BATCH)
        for row in rows:
            blobs.remove(row.id, row.format)
        removed.extend(rows)
        if progress is not None:
            progress(rows)
        if len(rows) < BATCH:
            return removed


def expire(store: Store, blobs: Blobs) -> list[FileRow]:
    """One cleanup pass: remove expired audio and record when it ran."""
    now = time.time()
    removed = purge(store, blobs, PurgeFilter(expired=True), now)
    store.prune_tombstones(now - TOMBSTONE_KEEP)
    store.set_meta(LAST_CLEANUP, repr(now))
    return removed


async def cleanup_loop(jobs: JobManager, store: Store, blobs: Blobs, interval: float) -> None:
    while True:
        try:
            # Expiry bumps of recent cache hits first, so audio just handed out is never deleted.
            await jobs.flush_hits()
            removed = await store.run(expire, store, blobs)
            for row in removed:
                jobs.ready.drop(row.id)
            log.info("cleanup removed %d expired files", len(removed))
        except Exception:
            log.exception("cleanup failed; trying again in %.0fs", interval)
        await asyncio.sleep(interval)
