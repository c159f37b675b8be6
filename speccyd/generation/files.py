"""The file service: every read and write of a user's audio files, and the in-memory ready cache.

Cache hits are answered from memory and their bookkeeping (expiry bump, last seen, usage record) is
buffered and written about once a second. Only this service knows that, so each of its reads that must
include the latest hits (library pages, usage, totals, cleanup) flushes the buffer itself: no caller has to
remember. New generations are handed to the job runner, which only generates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict

from speccyd.config.clock import Clock
from speccyd.config.settings import Settings
from speccyd.generation.cleanup import expire, purge
from speccyd.generation.errors import FileExpired, FileNotFound, GenerationFailed
from speccyd.generation.imports import Imported, Importer, Upload
from speccyd.generation.quotas import Quotas, quota_error
from speccyd.generation.readycache import ReadyCache
from speccyd.generation.runner import JobRunner
from speccyd.generation.speech import SpeechRequest
from speccyd.generation.timeline import read_timeline
from speccyd.ops.metrics import Metrics
from speccyd.storage.blobs import BlobStore
from speccyd.storage.database import Database
from speccyd.storage.errors import LimitReached
from speccyd.storage.records import ChangePage, FileRow, PurgeFilter, TimelineRecord, UsageLine, UserUsage

log = logging.getLogger(__name__)

# Expiry has one-second resolution anyway; a crash loses at most this much hit bookkeeping.
FLUSH_INTERVAL = 1.0
# Timelines of ready files kept in memory: a player fetches a segment every few seconds, and a finished file's
# timeline never changes. ~30 KB each for a 100-minute document.
TIMELINE_CACHE = 256


class FileService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        blobs: BlobStore,
        runner: JobRunner,
        ready: ReadyCache,
        quotas: Quotas,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._db = db
        self._blobs = blobs
        self._runner = runner
        self._ready = ready
        self._quotas = quotas
        self._generations = metrics.generations
        self._clock = clock
        self.importer = Importer(settings, db, blobs, clock, lambda: quotas.defaults)
        self._timelines: OrderedDict[str, TimelineRecord] = OrderedDict()

    async def request(self, user_id: str, speech: SpeechRequest) -> FileRow:
        """Audio for this request: cached, already in flight, or a generation started now.

        Quotas are checked (inside the claim) only for a new generation: see generation/quotas.py.
        """
        now = self._clock.now()
        cached = self._ready.find(user_id, speech.content_hash)
        if cached is not None and not cached.is_expired(now):
            if await self._blobs.exists(cached.id, cached.format):
                self._generations.labels("cache_hit").inc()
                return self._ready.hit(cached, now, self._settings.retention)
            self._ready.drop(cached.id)  # purged by another process; the database knows what is left
        try:
            claim = await self._db.claim(
                user_id, speech.new_file(), now, self._settings.retention, self._quotas.defaults
            )
        except LimitReached as e:
            self._generations.labels("quota_exceeded").inc()
            raise quota_error(e, len(speech.text), now) from None
        if claim.replaced is not None:
            self._ready.drop(claim.replaced.id)
            await self._blobs.remove(claim.replaced.id, claim.replaced.format)
        if claim.created:
            self._runner.start(claim.row)
        else:
            self._generations.labels("cache_hit" if claim.row.status == "ready" else "joined").inc()
        self._ready.put(claim.row)
        return claim.row

    async def get(self, file_id: str) -> FileRow | None:
        """A file by id: from memory when it is ready and known (with its latest expiry), else the database."""
        row = self._ready.get(file_id)
        if row is None:
            row = await self._db.get_file(file_id)
            if row is not None:
                self._ready.put(row)
        return row

    async def of_user(self, user_id: str, file_id: str) -> FileRow:
        """The user's own file; another user's file is "not found", never "forbidden"."""
        row = await self.get(file_id)
        if row is None or row.user_id != user_id:
            raise FileNotFound()
        return row

    async def by_hash(self, user_id: str, content_hash: str) -> FileRow | None:
        """The user's file for this content, as the database has it with the latest hits applied."""
        return self._with_hits(await self._db.get_by_hash(user_id, content_hash))

    async def current(self, user_id: str, file_id: str) -> FileRow:
        """The user's own file as the database has it (never a stale memory entry), hits applied."""
        row = self._with_hits(await self._db.get_file(file_id))
        if row is None or row.user_id != user_id:
            raise FileNotFound()
        return row

    def _with_hits(self, row: FileRow | None) -> FileRow | None:
        # A hit answered from memory in the last second moved the expiry; the row on disk does not know yet.
        if row is None:
            return None
        cached = self._ready.get(row.id)
        return cached if cached is not None and cached.expires_at > row.expires_at else row

    async def timeline(self, row: FileRow) -> TimelineRecord:
        """A ready file's timeline: as stored with it, or (a file made before timelines were kept) counted
        from its audio once and stored, which also fills in its duration."""
        record = self._timelines.get(row.id)
        if record is not None:
            self._timelines.move_to_end(row.id)
            return record
        record = await self._db.get_timeline(row.id)
        if record is None:
            # Named by its content, so a second count (two requests at once, or a failed save) names it alike.
            run = (row.sha256 or row.id)[:16]
            path = self._blobs.local_path(row.id, row.format)
            try:
                record = await asyncio.get_running_loop().run_in_executor(
                    None, read_timeline, path, row.format, row.text, run
                )
            except FileNotFoundError:
                raise FileNotFound() from None  # purged a moment ago
            if await self._db.save_timeline(row.id, record):
                cached = self._ready.get(row.id)
                if cached is not None:
                    self._ready.put(dataclasses.replace(cached, duration_s=record.duration_s))
        self._timelines[row.id] = record
        while len(self._timelines) > TIMELINE_CACHE:
            self._timelines.popitem(last=False)
        return record

    async def backfill_timelines(self, batch: int = 100) -> int:
        """Count the timeline (and so the duration) of every ready file made before timelines were kept, one
        file at a time in the background after start-up, so library entries show their length. Returns how
        many were counted; a file that cannot be (gone, unreadable) is skipped and tried on first use."""
        counted = 0
        tried: set[str] = set()
        while True:
            rows = [r for r in await self._db.ready_without_timeline(batch + len(tried)) if r.id not in tried]
            if not rows:
                return counted
            for row in rows:
                tried.add(row.id)
                try:
                    await self.timeline(row)
                    counted += 1
                except Exception:
                    log.warning("could not count the audio of %s; its timeline is made on first use", row.id)

    async def set_position(self, user_id: str, file_id: str, position_s: float, device: str | None) -> FileRow:
        """Where the user stopped listening (clamped to the duration); the last write, by server time, wins."""
        row = await self._db.set_position(user_id, file_id, position_s, device, self._clock.now())
        if row is None:
            raise FileNotFound()
        if row.status == "ready":
            cached = self._ready.get(row.id)
            if cached is not None and cached.expires_at > row.expires_at:
                row = dataclasses.replace(row, expires_at=cached.expires_at)  # a cache hit not yet written
            self._ready.put(row)
        return row

    def check_servable(self, row: FileRow, now: float) -> None:
        """Refuse what has no audio to serve: a failed generation, or audio that has expired."""
        if row.status == "failed":
            raise GenerationFailed(f"generation failed: {row.error}", row.error_code or "", row.upstream_status)
        if row.is_expired(now):
            raise FileExpired("this audio has expired")

    async def delete(self, user_id: str, file_id: str) -> None:
        """Delete a user's file: its row, any job in flight, then its audio."""
        row = await self._db.delete_file(user_id, file_id, self._clock.now())
        if row is None:
            raise FileNotFound()
        self._ready.drop(file_id)
        await self._runner.cancel(file_id)
        await self._blobs.remove(row.id, row.format)

    # --- imports (generation/imports.py) ---

    async def import_existing(self, user_id: str, content_hash: str) -> FileRow | None:
        """The user's audio for this content that an import would keep (ready, or being generated)."""
        return self._with_hits(await self.importer.existing(user_id, content_hash))

    async def import_upload(self, user_id: str, speech: SpeechRequest, upload: Upload) -> Imported:
        """Keep a validated upload as the user's file; the ready cache learns of it at once."""
        imported = await self.importer.store(user_id, speech, upload)
        if imported.replaced is not None:
            self._ready.drop(imported.replaced.id)
        if imported.row.status == "ready":
            self._ready.put(imported.row)
        return imported

    # --- reads that include the cache hits answered from memory ---

    async def changes_since(self, user_id: str, since: int, limit: int) -> ChangePage:
        await self.flush_hits()
        return await self._db.changes_since(user_id, since, limit)

    async def user_usage(self, user_id: str) -> UserUsage | None:
        await self.flush_hits()
        return await self._db.user_usage(user_id, self._clock.now())

    async def usage_lines(self, since: float, user_id: str | None = None) -> list[UsageLine]:
        await self.flush_hits()
        return await self._db.usage_lines(since, user_id)

    async def storage_totals(self) -> tuple[int, int]:
        return await self._db.storage_totals()

    # --- removal ---

    async def purge(self, what: PurgeFilter) -> list[FileRow]:
        removed = await purge(self._db, self._blobs, what, self._clock.now())
        for row in removed:
            self._ready.drop(row.id)
        return removed

    async def expire(self) -> list[FileRow]:
        """One cleanup pass; expiry bumps of recent cache hits first, so audio just handed out is kept."""
        await self.flush_hits()
        removed = await expire(self._db, self._blobs, self._clock.now())
        for row in removed:
            self._ready.drop(row.id)
        return removed

    async def expire_forever(self, interval: float) -> None:
        while True:
            try:
                removed = await self.expire()
                log.info("cleanup removed %d expired files", len(removed))
            except Exception:
                log.exception("cleanup failed; trying again in %.0fs", interval)
            await asyncio.sleep(interval)

    # --- cache-hit bookkeeping ---

    async def flush_hits(self) -> None:
        hits = self._ready.drain()
        if hits:
            try:
                await self._db.record_hits(hits)
            except BaseException:
                self._ready.requeue(hits)  # kept for the next flush, not lost with this one
                raise

    async def flush_hits_forever(self, interval: float = FLUSH_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_hits()
            except Exception:
                log.exception("recording cache hits failed; will retry")
