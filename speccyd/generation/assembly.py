"""Putting a job's chunks together in text order while they are generated in parallel.

Every chunk attempt writes its (cleaned) audio to its own anonymous spool file as it arrives. The assembler
copies the spools into the file's temp file in order, following the chunk at the head live: chunk 1's first
bytes reach readers as soon as the upstream sends them, and later chunks, usually finished by the time
their turn comes, are copied at disk speed. Spools are on disk, not in memory, so a 100,000-character
document costs the same memory as a sentence.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import IO

from speccyd.generation.live import READ_BLOCK, LiveFile
from speccyd.generation.timeline import LiveTimeline
from speccyd.storage.blobs import BlobWriter


class Part:
    """One chunk's audio: the current attempt's spool, how much of it is written, and whether it is whole."""

    def __init__(self, spool_dir: Path) -> None:
        self._spool_dir = spool_dir
        self._spool: IO[bytes] | None = None
        self.size = 0
        self.generation = 0  # changes whenever an attempt starts or fails: what was read of it may be void
        self.complete = False
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        return self._changed

    def begin(self) -> None:
        self.close()
        # Unlinked at creation: a crash leaves no spool behind.
        self._spool = tempfile.TemporaryFile(dir=self._spool_dir, buffering=0)  # noqa: SIM115 - closed by close()
        self.size = 0
        self.complete = False
        self.generation += 1
        self._notify()

    def write(self, data: bytes) -> None:
        if not data:
            return
        assert self._spool is not None
        fd = self._spool.fileno()
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, self.size + len(data) - len(view)) :]
        self.size += len(data)
        self._notify()

    def read(self, offset: int, size: int) -> bytes:
        assert self._spool is not None
        return os.pread(self._spool.fileno(), size, offset)

    def finish(self) -> None:
        self.complete = True
        self._notify()

    def abort(self) -> None:
        self.close()
        self.size = 0
        self.generation += 1
        self._notify()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


async def assemble(parts: list[Part], writer: BlobWriter, live: LiveFile, timeline: LiveTimeline | None = None) -> None:
    """Copy every part into `writer` in order, publishing each piece to `live` as soon as it is written.

    `timeline` counts the audio as it is written (samples, HLS segments). A failed attempt is rewound to
    where its part began, except what a playlist already served has listed: those bytes stay, and the
    retry's audio follows them (a listed segment can never change; see docs/streaming.md).
    """
    for part in parts:
        start = writer.size
        live.settle(start)  # every part before this one is complete: its bytes can no longer change
        if timeline is not None:
            timeline.begin_piece(start)
        generation = part.generation
        copied = 0
        while True:
            changed = part.changed
            if part.generation != generation:
                if copied:
                    # The attempt we were following failed; its retry will produce different audio.
                    back = max(start, timeline.protected_end()) if timeline is not None else start
                    writer.rewind(back)
                    live.rewind(back)
                    if timeline is not None:
                        timeline.rewind(back)
                    copied = 0
                generation = part.generation
            if copied < part.size:
                data = part.read(copied, min(READ_BLOCK, part.size - copied))
                writer.write(data)
                if timeline is not None:
                    timeline.feed(data)
                copied += len(data)
                live.publish(writer.size)
                await asyncio.sleep(0)  # let readers and the upstream in between blocks of a long copy
                continue
            if part.complete:
                break
            await changed.wait()
        if timeline is not None:
            timeline.end_piece()
        part.close()
    live.settle(writer.size)
