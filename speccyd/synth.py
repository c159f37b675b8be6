"""Generation jobs: one background task per new audio file, bounded upstream concurrency, retries."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time

from speccyd.blobs import Blobs, BlobWriter
from speccyd.crypto import ServerSecrets
from speccyd.readycache import ReadyCache
from speccyd.settings import Settings
from speccyd.store import FileRow, Store
from speccyd.tts import SpeechRequest
from speccyd.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class JobManager:
    def __init__(
        self, settings: Settings, store: Store, blobs: Blobs, upstream: Upstream, secrets: ServerSecrets
    ) -> None:
        self._settings = settings
        self._store = store
        self._blobs = blobs
        self._upstream = upstream
        self._secrets = secrets
        self.ready = ReadyCache()
        self._slots = asyncio.Semaphore(settings.upstream_concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finishing: set[asyncio.Task[None]] = set()

    async def request(self, user_id: str, speech: SpeechRequest) -> FileRow:
        """Audio for this request: cached, already in flight, or a generation started now."""
        now = time.time()
        cached = self.ready.find(user_id, speech.content_hash)
        if cached is not None and not cached.is_expired(now):
            if self._blobs.exists(cached.id, cached.format):
                return self.ready.hit(cached, now, self._settings.retention)
            self.ready.drop(cached.id)  # purged by another process; the database knows what is left
        store = self._store
        claim = await store.run(store.claim, user_id, speech.new_file(), now, self._settings.retention)
        if claim.replaced is not None:
            self.ready.drop(claim.replaced.id)
            self._blobs.remove(claim.replaced.id, claim.replaced.format)
        if claim.created:
            self.start(claim.row)
        self.ready.put(claim.row)
        return claim.row

    async def get(self, file_id: str) -> FileRow | None:
        """A file by id, from memory when it is ready and known, else from the database."""
        row = self.ready.get(file_id)
        if row is None:
            row = await self._store.run(self._store.get_file, file_id)
            if row is not None:
                self.ready.put(row)
        return row

    async def delete(self, user_id: str, file_id: str) -> bool:
        """Delete a user's file: its row, any job in flight, then its audio."""
        row = await self._store.run(self._store.delete_file, user_id, file_id)
        if row is None:
            return False
        self.ready.drop(file_id)
        await self.cancel(file_id)
        self._blobs.remove(row.id, row.format)
        return True

    async def flush_hits(self) -> None:
        hits = self.ready.drain()
        if hits:
            await self._store.run(self._store.record_hits, hits)

    async def flush_hits_forever(self, interval: float = 1.0) -> None:
        # Expiry has one-second resolution anyway; a crash loses at most this much hit bookkeeping.
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_hits()
            except Exception:
                log.exception("recording cache hits failed; will retry")

    def start(self, row: FileRow) -> None:
        if row.id in self._tasks:
            return
        task = asyncio.create_task(self._run(row), name=f"generate {row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))

    async def cancel(self, file_id: str) -> None:
        task = self._tasks.get(file_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Cancel every job; their rows stay 'generating' and are resumed at the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._finishing, return_exceptions=True)

    async def _run(self, row: FileRow) -> None:
        store = self._store
        try:
            blob = await store.run(store.user_key, row.user_id)
            api_key = self._secrets.decrypt_key(blob, row.user_id) if blob is not None else None
            if api_key is None:
                raise UpstreamError("the server cannot use this user's key any more; sign in again", retryable=False)
            await self._generate(row, api_key)
        except UpstreamError as e:
            log.warning("generation %s failed: %s", row.id, e.message)
            await store.run(store.mark_failed, row.id, e.message, time.time())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("generation %s failed unexpectedly", row.id)
            await store.run(store.mark_failed, row.id, "internal error while generating", time.time())

    async def _generate(self, row: FileRow, api_key: str) -> None:
        attempts = self._settings.upstream_attempts
        for attempt in range(1, attempts + 1):
            try:
                await self._attempt(row, api_key)
                return
            except UpstreamError as e:
                if not e.retryable or attempt == attempts:
                    if attempt > 1:
                        e.message = f"{e.message} (after {attempt} attempts)"
                    raise
                delay = e.retry_after
                if delay is None:
                    # Exponential backoff with jitter so many failed jobs do not return in lockstep.
                    base = min(MAX_BACKOFF, self._settings.retry_backoff * 2 ** (attempt - 1))
                    delay = base * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not security
                log.info(
                    "generation %s attempt %d failed (%s); retrying in %.2fs",
                    row.id,
                    attempt,
                    e.message,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(self, row: FileRow, api_key: str) -> None:
        writer = self._blobs.writer(row.id, row.format)
        try:
            async with self._slots:
                chunks = self._upstream.speech(
                    api_key,
                    text=row.text,
                    model=row.model,
                    voice=row.voice,
                    fmt=row.format,
                    speed=row.speed,
                    instructions=row.instructions,
                )
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        writer.write(chunk)
            if writer.size == 0:
                raise UpstreamError("upstream returned no audio", retryable=True)
        except BaseException:
            writer.discard()
            raise
        # Shielded: once the audio is complete, a cancel must not leave the file and its row out of step.
        finish = asyncio.ensure_future(self._finish(row, writer))
        self._finishing.add(finish)
        finish.add_done_callback(self._finishing.discard)
        await asyncio.shield(finish)

    async def _finish(self, row: FileRow, writer: BlobWriter) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, writer.commit)
        except BaseException:
            writer.discard()
            raise
        store = self._store
        now = time.time()
        stored = await store.run(store.mark_ready, row.id, writer.size, writer.sha256, now, self._settings.retention)
        if not stored:  # deleted or purged while generating: keep no audio without a row
            self._blobs.remove(row.id, row.format)
            return
        ready = dataclasses.replace(
            row, status="ready", size_bytes=writer.size, sha256=writer.sha256, updated_at=now,
            expires_at=now + self._settings.retention,
        )  # fmt: skip
        self.ready.put(ready)
