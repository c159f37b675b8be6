"""Generation jobs: one background task per new audio file, bounded upstream concurrency, retries.

A text longer than `upstream_max_chars` is split into chunks generated in parallel (at most
`chunk_concurrency` per job, and `upstream_concurrency` for the whole server) and joined in order. The runner
only generates: the file service decides what to generate and serves what is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from speccyd.config.clock import Clock
from speccyd.config.settings import Settings
from speccyd.config.text import describe
from speccyd.generation.assembly import Part, assemble
from speccyd.generation.live import LiveFile
from speccyd.generation.textplan import Plan, plan_text, title_of
from speccyd.generation.timeline import HLS_FORMATS, LiveTimeline, read_edges
from speccyd.generation.upstream import Upstream, UpstreamError
from speccyd.media import id3
from speccyd.media.join import JOINABLE, Cleaner, Joiner, JoinError
from speccyd.ops.metrics import Metrics
from speccyd.security.crypto import ServerSecrets
from speccyd.storage.blobs import BlobStore, BlobWriter
from speccyd.storage.database import Database
from speccyd.storage.errors import StorageFull
from speccyd.storage.records import Failure, FileRow

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
# The longest answer OpenAI can give is 4,096 characters at speed 0.25 as 24 kHz 16-bit PCM: about 18 minutes,
# 52 MB. Past this an upstream is broken, and would otherwise fill the disk until the deadline.
MAX_AUDIO_BYTES = 128 * 1024 * 1024
# A full disk (or quota): retrying the upstream call would pay for audio we cannot keep.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _storage_error(e: OSError) -> StorageFull | None:
    return StorageFull(describe(e)) if e.errno in _NO_SPACE else None


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        blobs: BlobStore,
        upstream: Upstream,
        secrets: ServerSecrets,
        metrics: Metrics,
        clock: Clock,
        on_ready: Callable[[FileRow], None],
    ) -> None:
        self._settings = settings
        self._db = db
        self._blobs = blobs
        self._upstream = upstream
        self._secrets = secrets
        self._metrics = metrics
        self._clock = clock
        self._on_ready = on_ready  # the file service's ready cache learns of each finished file
        self._slots = asyncio.Semaphore(settings.upstream_concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finishing: set[asyncio.Task[None]] = set()
        self._live: dict[str, LiveFile] = {}

    @property
    def running(self) -> int:
        """Generations in progress (the speccyd_generations_running metric)."""
        return len(self._tasks)

    def _outcome(self, outcome: str) -> None:
        self._metrics.generations.labels(outcome).inc()

    def start(self, row: FileRow) -> None:
        if row.id in self._tasks:
            return
        # Created here, not in the task, so a reader arriving right after the request finds it. The run names
        # this generation's audio in segment URIs: one started over after a restart makes other bytes.
        live = LiveFile(LiveTimeline(secrets.token_hex(8), row.format))
        self._live[row.id] = live
        task = asyncio.create_task(self._run(row, live), name=f"generate {row.id}")
        self._tasks[row.id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(row.id, None)
            self._live.pop(row.id, None)

        task.add_done_callback(forget)

    def live(self, file_id: str) -> LiveFile | None:
        """The in-progress view of a file this process is generating, for readers to follow."""
        return self._live.get(file_id)

    def end_streams(self) -> None:
        """Cut every live reader (at shutdown: a stream waiting on a job would hold the server up)."""
        for live in self._live.values():
            live.abandon_readers()

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

    async def _run(self, row: FileRow, live: LiveFile) -> None:
        try:
            blob = await self._db.user_key(row.user_id)
            api_key = self._secrets.decrypt_key(blob, row.user_id) if blob is not None else None
            if api_key is None:
                raise UpstreamError(
                    "the server cannot use this user's key any more; sign in again",
                    retryable=False,
                    code="key_unusable",
                )
            await self._generate(row, api_key, live)
            self._outcome("generated")
        except UpstreamError as e:
            log.warning("generation %s failed: %s", row.id, e.message)
            await self._fail(row, Failure(e.code, e.message, e.status))
        except StorageFull as e:
            log.error("generation %s failed: no space left for its audio or its row (%s)", row.id, e.detail)
            await self._fail(row, Failure("storage_full", str(e)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("generation %s failed unexpectedly", row.id)
            await self._fail(row, Failure("internal_error", "internal error while generating"))
        finally:
            if live.state == "generating":  # failed or cancelled: readers must not see a clean end
                live.fail()

    async def _fail(self, row: FileRow, failure: Failure) -> None:
        self._outcome("failed")
        try:
            await self._db.mark_failed(row.id, failure, self._clock.now())
        except Exception:
            # Not even the failure could be written (a full disk, a broken database): the row stays
            # 'generating' and is generated again at the next start, so nothing is lost or left half done.
            log.exception("generation %s: cannot record its failure either; it is retried at the next start", row.id)

    async def _plan(self, text: str, fmt: str) -> Plan:
        """The upstream calls for this text: pieces of at most timeline_chars (upstream_max_chars for formats
        that cannot be joined), a new one at every Markdown heading (textplan.py)."""
        limit = self._settings.upstream_max_chars
        joinable = fmt in JOINABLE
        piece_chars = min(self._settings.timeline_chars, limit) if joinable else limit
        if len(text) <= piece_chars and "#" not in text:
            return Plan([(0, len(text))], [], title_of(text))
        # Up to ~0.1 s for 100,000 characters: off the event loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: plan_text(text, piece_chars, joinable=joinable))

    async def _generate(self, row: FileRow, api_key: str, live: LiveFile) -> None:
        plan = await self._plan(row.text, row.format)
        texts = [row.text[a:b] for a, b in plan.pieces]
        # mp3 and aac files are their audio frames only, so that every decoder plays what the HLS segments hold
        # and a retry that follows kept audio (assembly.py) joins cleanly: no upstream ID3 tag or Xing/Info
        # frame. A joined or chaptered mp3 starts with speccyd's own tag (title, chapters).
        tagged = row.format == "mp3" and (len(texts) > 1 or bool(plan.chapters))
        try:
            joiner = Joiner(row.format, len(texts), drop_tags=row.format in HLS_FORMATS)
        except JoinError as e:
            raise UpstreamError(str(e), retryable=False, code="upstream_bad_audio") from None
        live.chunks_total = len(texts)
        timeline = live.timeline
        assert timeline is not None
        # The first bytes change at the end for a joined WAV (its sizes) and a chaptered mp3 (the times in its
        # tag): progressive readers of those wait for the finished file (docs/streaming.md).
        chapters = plan.chapters if row.format == "mp3" else []  # at most 255, what a CTOC frame can name
        timeline.begin(plan, len(row.text), header_final=not chapters and not (row.format == "wav" and len(texts) > 1))
        live.settle(0)  # wakes readers waiting for the plan (LiveFile.planned)
        try:
            writer = self._blobs.writer(row.id, row.format)
        except OSError as e:
            raise _storage_error(e) or e from None
        live.open(writer.temp, self._blobs.local_path(row.id, row.format))
        parts = [Part(self._blobs.spool_dir) for _ in texts]
        job = _Job(row, api_key, joiner, live, asyncio.Semaphore(self._settings.chunk_concurrency))
        try:
            tag_size = 0
            if tagged:
                # Reserved at its final size (only the titles decide it); the times are written at the end.
                tag = id3.chapter_tag(plan.title, [id3.Chapter(c.title, 0, 0) for c in chapters])
                tag_size = len(tag)
                writer.write(tag)
                live.publish(writer.size)
            try:
                async with asyncio.TaskGroup() as group:
                    for index, text in enumerate(texts):
                        group.create_task(self._chunk(job, index, text, parts[index]))
                    group.create_task(assemble(parts, writer, live, timeline))
            except BaseExceptionGroup as group_error:
                cause = _first_cause(group_error)
                if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
                    cause = _storage_error(cause) or cause
                raise cause from None
            head, tail = b"", b""
            if row.format in ("opus", "flac", "wav") and len(texts) == 1:
                head, tail = await asyncio.get_running_loop().run_in_executor(None, read_edges, writer.temp)
            timeline.finish(head, tail, writer.size)
            for offset, data in joiner.patches(writer.size):
                writer.patch(offset, data)
            if tagged:
                final = id3.chapter_tag(plan.title, _tag_chapters(timeline, len(chapters)), size=tag_size)
                writer.patch(0, final)
            timeline.seal()
        except BaseException:
            writer.discard()
            raise
        finally:
            for part in parts:
                part.close()
        # Shielded: once the audio is complete, a cancel must not leave the file and its row out of step.
        finish = asyncio.ensure_future(self._finish(row, writer, live, timeline))
        self._finishing.add(finish)
        finish.add_done_callback(self._finishing.discard)
        await asyncio.shield(finish)

    async def _chunk(self, job: _Job, index: int, text: str, part: Part) -> None:
        """One chunk, with the core's retry rules: bounded attempts, Retry-After, backoff with jitter."""
        attempts = self._settings.upstream_attempts
        total = job.live.chunks_total
        for attempt in range(1, attempts + 1):
            try:
                await self._attempt(job, text, part, job.joiner.cleaner(index))
                job.live.chunk_done()
                return
            except UpstreamError as e:
                if not e.retryable or attempt == attempts:
                    if attempt > 1:
                        e.message = f"{e.message} (after {attempt} attempts)"
                    if total > 1:
                        e.message = f"chunk {index + 1} of {total}: {e.message}"
                    raise
                delay = e.retry_after
                if delay is None:
                    # Exponential backoff with jitter so many failed jobs do not return in lockstep.
                    base = min(MAX_BACKOFF, self._settings.retry_backoff * 2 ** (attempt - 1))
                    delay = base * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not security
                log.info(
                    "generation %s chunk %d attempt %d failed (%s); retrying in %.2fs",
                    job.row.id,
                    index + 1,
                    attempt,
                    e.message,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(self, job: _Job, text: str, part: Part, cleaner: Cleaner) -> None:
        row = job.row
        received = 0
        deadline = self._settings.upstream_deadline
        try:
            # The job's own limit first, then a server-wide slot: never more than upstream_concurrency calls.
            # upstream_timeout bounds each wait for bytes; the deadline bounds the whole call, so a trickle
            # of bytes cannot hold an upstream slot forever.
            async with job.chunk_slots, self._slots, asyncio.timeout(deadline):
                part.begin()
                started = self._clock.monotonic()
                result = "error"
                chunks = self._upstream.speech(
                    job.api_key,
                    text=text,
                    model=row.model,
                    voice=row.voice,
                    fmt=row.format,
                    speed=row.speed,
                    instructions=row.instructions,
                )
                try:
                    async with contextlib.aclosing(chunks):
                        async for chunk in chunks:
                            if received == 0:
                                self._metrics.upstream_first_byte.observe(self._clock.monotonic() - started)
                            received += len(chunk)
                            if received > MAX_AUDIO_BYTES:
                                raise UpstreamError(
                                    f"upstream sent more than {MAX_AUDIO_BYTES // 2**20} MiB of audio",
                                    retryable=False,
                                    code="upstream_bad_audio",
                                )
                            part.write(cleaner.feed(chunk))
                    result = "ok"
                finally:
                    self._metrics.upstream_duration.labels(result).observe(self._clock.monotonic() - started)
            if received == 0:
                raise UpstreamError("upstream returned no audio", retryable=True, code="upstream_bad_audio")
            part.write(cleaner.finish())
            part.finish()
        except JoinError as e:
            part.abort()
            raise UpstreamError(
                f"cannot join the upstream's audio: {e}", retryable=False, code="upstream_bad_audio"
            ) from None
        except TimeoutError:
            part.abort()
            raise UpstreamError(
                f"upstream too slow: no complete audio within {deadline:g}s", retryable=True, code="upstream_timeout"
            ) from None
        except OSError as e:
            part.abort()
            raise _storage_error(e) or e from None
        except BaseException:
            part.abort()
            raise

    async def _finish(self, row: FileRow, writer: BlobWriter, live: LiveFile, timeline: LiveTimeline) -> None:
        try:
            await writer.commit()
        except OSError as e:
            writer.discard()
            raise _storage_error(e) or e from None
        except BaseException:
            writer.discard()
            raise
        now = self._clock.now()
        record = timeline.record()
        try:
            # Before the row says "ready": a ready file always has its timeline (a crash in between leaves a
            # generating row, generated again at the next start, and its timeline replaced then).
            stored = await self._db.save_timeline(row.id, record)
            if stored:
                stored = await self._db.mark_ready(row.id, writer.size, writer.sha256, now, self._settings.retention)
        except BaseException:  # the row could not say "ready" (a full disk): keep no file it does not name
            await self._blobs.remove(row.id, row.format)
            raise
        if not stored:  # deleted or purged while generating: keep no audio without a row
            await self._blobs.remove(row.id, row.format)
            return
        ready = dataclasses.replace(
            row, status="ready", size_bytes=writer.size, sha256=writer.sha256, updated_at=now,
            expires_at=now + self._settings.retention, duration_s=record.duration_s,
        )  # fmt: skip
        self._on_ready(ready)
        live.finish()


@dataclass(frozen=True)
class _Job:
    """What every chunk of one generation shares."""

    row: FileRow
    api_key: str
    joiner: Joiner
    live: LiveFile
    chunk_slots: asyncio.Semaphore  # chunk_concurrency: this job's share of the upstream


def _tag_chapters(timeline: LiveTimeline, count: int) -> list[id3.Chapter]:
    """The first `count` chapters with their times in ms: each ends where the next begins, the last at the end."""
    record = timeline.record()
    rate = record.sample_rate or 1
    starts = [round(c.sample * 1000 / rate) for c in record.chapters] + [round(record.samples * 1000 / rate)]
    chapters = record.chapters[:count]
    return [id3.Chapter(c.title, starts[i], max(starts[i], starts[i + 1])) for i, c in enumerate(chapters)]


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that stopped a job's task group: an upstream failure if there is one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    for error in leaves:
        if isinstance(error, UpstreamError):
            return error
    return leaves[0]
