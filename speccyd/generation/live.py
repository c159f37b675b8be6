"""A file still being generated, as its readers see it: how many bytes are final, and how it ended.

The job appends to the file's temp file and publishes the new length; any number of readers follow it by
reading the temp file up to that length, so memory stays flat however many there are. When a chunk's
attempt fails after some of its bytes went out, the job rewinds to where that chunk began: readers that
already received bytes past that point end abnormally, the others carry on unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path

from speccyd.generation.timeline import LiveTimeline

READ_BLOCK = 64 * 1024


class LiveAborted(Exception):
    """The stream a reader was following cannot be completed (generation failed, or rewound past it)."""


class LiveFile:
    def __init__(self, timeline: LiveTimeline | None = None) -> None:
        self.timeline = timeline  # its read-along timeline and HLS segments, counted as the audio is written
        self.temp: Path | None = None  # where the bytes are being written; renamed to `final` when complete
        self.final: Path | None = None
        self.length = 0
        self.stable = 0  # bytes before this offset are final: no rewind can take them back (pieces done)
        self.state = "generating"  # then "ready" or "failed"
        self.chunks_done = 0
        self.chunks_total = 0
        self._rewinds: list[int] = []  # the length each rewind went back to, in order
        self._abandoned = False  # the server is stopping: readers end now, the job may still finish
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        # A fresh event per change: every waiter of the old one wakes, and nobody has to clear anything.
        self._changed.set()
        self._changed = asyncio.Event()

    def open(self, temp: Path, final: Path) -> None:
        self.temp, self.final = temp, final

    def publish(self, length: int) -> None:
        self.length = length
        self._notify()

    def settle(self, stable: int) -> None:
        self.stable = stable
        self._notify()

    def rewind(self, length: int) -> None:
        self._rewinds.append(length)
        self.length = length
        self._notify()

    def chunk_done(self) -> None:
        self.chunks_done += 1
        self._notify()

    def finish(self) -> None:
        self.state = "ready"
        self._notify()

    def fail(self) -> None:
        self.state = "failed"
        self._notify()

    async def planned(self) -> None:
        """Return once the job has planned the file (its timeline knows whether its first bytes are final)."""
        while (
            self.timeline is not None
            and self.timeline.plan is None
            and self.state == "generating"
            and not self._abandoned
        ):
            await self._changed.wait()

    async def settled(self) -> None:
        """Return once the generation has ended either way (or the server is stopping)."""
        while self.state == "generating" and not self._abandoned:
            await self._changed.wait()

    async def settled_past(self, offset: int) -> None:
        """Return once the byte at `offset` is final (see `stable`), or the generation has ended either way."""
        while self.stable <= offset and self.state == "generating" and not self._abandoned:
            await self._changed.wait()

    def open_reader(self) -> int:
        """A read-only fd of the file being written (or just renamed into place); LiveAborted if it is gone."""
        return self._open_fd()

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    async def started(self) -> None:
        """Return once the first bytes are published, or the generation has ended either way."""
        while self.length == 0 and self.state == "generating" and not self._abandoned:
            await self._changed.wait()

    def abandon_readers(self) -> None:
        self._abandoned = True
        self._notify()

    def _still_valid(self, position: int, seen_rewinds: int) -> bool:
        """Whether a reader at `position` only holds bytes no rewind since `seen_rewinds` took back."""
        return all(position <= length for length in self._rewinds[seen_rewinds:])

    def _open_fd(self) -> int:
        for path in (self.temp, self.final):  # the temp file may have just been renamed into place
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    return os.open(path, os.O_RDONLY)
        raise LiveAborted("the file is gone")

    async def follow(self) -> AsyncGenerator[bytes, None]:
        """Everything written so far, then each new piece as it is published, until the file is complete.

        Raises LiveAborted when the stream cannot end as a complete file.
        """
        position = 0
        seen_rewinds = len(self._rewinds)
        fd: int | None = None
        try:
            while True:
                changed = self._changed
                if self._abandoned:
                    raise LiveAborted("the server is shutting down")
                if not self._still_valid(position, seen_rewinds):
                    raise LiveAborted("generation restarted a chunk this reader had already received")
                seen_rewinds = len(self._rewinds)
                if position < self.length:
                    if fd is None:
                        fd = self._open_fd()
                    # Read on the event loop, not a worker thread: the bytes were just written, so this is a
                    # page-cache copy of microseconds, and worker threads' malloc arenas cost 20 readers of a
                    # 50 MB file ~12 MB of RSS (bench/streaming.py). No rewind can interleave with the read.
                    data = os.pread(fd, min(READ_BLOCK, self.length - position), position)
                    if not data:
                        raise LiveAborted("the file is shorter than published")
                    position += len(data)
                    yield data
                    await asyncio.sleep(0)  # a late joiner catching up must not hold the loop for 50 MB
                    continue
                if self.state == "ready":
                    return
                if self.state == "failed":
                    raise LiveAborted("generation failed")
                await changed.wait()
        finally:
            if fd is not None:
                os.close(fd)
