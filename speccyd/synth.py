"""Generation jobs: one background task per new audio file, bounded upstream concurrency, retries."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time

from speccyd.blobs import Blobs, BlobWriter
from speccyd.crypto import ServerSecrets
from speccyd.errors import STORAGE_FULL_MESSAGE, ApiError, StorageFull
from speccyd.settings import Settings
from speccyd.store import FileRow, Store, UnknownUser
from speccyd.tts import SpeechRequest
from speccyd.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
# The longest answer OpenAI can give is 4,096 characters at speed 0.25 as 24 kHz 16-bit PCM: about 18 minutes,
# 52 MB. Past this an upstream is broken, and would otherwise fill the disk until the deadline.
MAX_AUDIO_BYTES = 128 * 1024 * 1024
# A full disk (or quota): retrying the upstream call would pay for audio we cannot keep.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _storage_error(e: OSError) -> StorageFull | None:
    return StorageFull() if e.errno in _NO_SPACE else None


class JobManager:
    def __init__(
        self, settings: Settings, store: Store, blobs: Blobs, upstream: Upstream, secrets: ServerSecrets
    ) -> None:
        self._settings = settings
        self._store = store
        self._blobs = blobs
        self._upstream = upstream
        self._secrets = secrets
        self._slots = asyncio.Semaphore(settings.upstream_concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finishing: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def request(self, user_id: str, speech: SpeechRequest) -> FileRow:
        """Audio for this request: cached, already in flight, or a generation started now."""
        store = self._store
        try:
            claim = await store.run(store.claim, user_id, speech.new_file(), time.time(), self._settings.retention)
        except UnknownUser:
            raise ApiError(401, "invalid_session", "this session's user no longer exists; sign in again") from None
        if claim.replaced is not None:
            self._blobs.remove(claim.replaced.id, claim.replaced.format)
        if claim.created:
            self.start(claim.row)
        return claim.row

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
        except StorageFull:
            log.error("generation %s failed: no space left for audio in %s", row.id, self._blobs.root)
            try:
                await store.run(store.mark_failed, row.id, f"storage_full: {STORAGE_FULL_MESSAGE}", time.time())
            except StorageFull:
                # Not even the failure fits: the row stays 'generating' and is retried at the next start.
                log.error("generation %s: cannot record the failure either; the disk is full", row.id)
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
        try:
            writer = self._blobs.writer(row.id, row.format)
        except OSError as e:
            raise _storage_error(e) or e from None
        deadline = self._settings.upstream_deadline
        try:
            # upstream_timeout bounds each wait for bytes; the deadline bounds the whole call, so a
            # trickle of bytes cannot hold an upstream slot forever.
            async with self._slots, asyncio.timeout(deadline):
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
                        if writer.size > MAX_AUDIO_BYTES:
                            raise UpstreamError(
                                f"upstream sent more than {MAX_AUDIO_BYTES // 2**20} MiB of audio", retryable=False
                            )
            if writer.size == 0:
                raise UpstreamError("upstream returned no audio", retryable=True)
        except TimeoutError:
            writer.discard()
            raise UpstreamError(f"upstream too slow: no complete audio within {deadline:g}s", retryable=True) from None
        except OSError as e:
            writer.discard()
            raise _storage_error(e) or e from None
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
        except OSError as e:
            writer.discard()
            raise _storage_error(e) or e from None
        except BaseException:
            writer.discard()
            raise
        store = self._store
        try:
            stored = await store.run(
                store.mark_ready, row.id, writer.size, writer.sha256, time.time(), self._settings.retention
            )
        except BaseException:  # the row could not say "ready" (a full disk): keep no file it does not name
            self._blobs.remove(row.id, row.format)
            raise
        if not stored:  # deleted or purged while generating: keep no audio without a row
            self._blobs.remove(row.id, row.format)
