"""Audio bytes: the blob-store interface, and its implementation as files in the data dir's `audio/`.

Server-chosen names only; a file is written to a temp file and renamed into place once complete, so no
reader ever sees half a file under its final name. A second store (S3-compatible) implements `BlobStore`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Protocol

from speccyd.config.settings import Settings

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
_ID = re.compile(r"^[0-9a-f]{32}$")


class BlobWriter(Protocol):
    """One file being written: a local temp file (which live readers follow) until `commit`."""

    temp: Path
    size: int

    def write(self, data: bytes) -> None: ...
    def rewind(self, size: int) -> None: ...
    def patch(self, offset: int, data: bytes) -> None: ...
    @property
    def sha256(self) -> str: ...
    async def commit(self) -> None: ...
    def discard(self) -> None: ...


class BlobStore(Protocol):
    spool_dir: Path  # local scratch space for the parts of a long text

    def writer(self, file_id: str, fmt: str) -> BlobWriter: ...
    async def exists(self, file_id: str, fmt: str) -> bool: ...
    def local_path(self, file_id: str, fmt: str) -> Path: ...
    async def remove(self, file_id: str, fmt: str) -> None: ...
    async def sweep(self, keep: set[str]) -> int: ...


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def check_id(file_id: str) -> str:
    if not _ID.match(file_id):  # ids are ours, but a path must never follow anything else
        raise ValueError(f"not a file id: {file_id!r}")
    return file_id


class LocalBlobWriter:
    """A temp file that counts and hashes what is written; `commit` makes it the file's audio."""

    def __init__(self, blobs: LocalBlobs, file_id: str, fmt: str) -> None:
        self.final = blobs.path(file_id, fmt)
        self.temp = blobs.spool_dir / f"{file_id}.{secrets.token_hex(4)}.part"
        self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash: hashlib._Hash | None = hashlib.sha256()  # None once bytes were rewritten: hashed at commit
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._hash is not None:
            self._hash.update(data)
        self.size += len(data)

    def rewind(self, size: int) -> None:
        """Forget everything after the first `size` bytes; the next write continues from there."""
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)
        self.size = size
        self._hash = None

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already written (a header whose sizes were unknown until the end)."""
        os.pwrite(self._fd, data, offset)
        self._hash = None

    @property
    def sha256(self) -> str:
        assert self._hash is not None, "hashed at commit after a rewind or patch"
        return self._hash.hexdigest()

    def _rehash(self) -> None:
        digest = hashlib.sha256()
        with self.temp.open("rb") as f:
            while block := f.read(1024 * 1024):
                digest.update(block)
        self._hash = digest

    def _commit(self) -> None:
        if self._hash is None:
            self._rehash()
        # fsync before rename so a crash never leaves a half file under the final name.
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(self.temp, self.final)
        dir_fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def commit(self) -> None:
        # Hashing and two fsyncs of a long file take milliseconds to seconds: off the event loop.
        await asyncio.get_running_loop().run_in_executor(None, self._commit)

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.temp.unlink(missing_ok=True)


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_str = str(root)
        self.spool_dir = root / TMP_DIR
        make_private_dir(root)
        make_private_dir(self.spool_dir)

    def path(self, file_id: str, fmt: str) -> Path:
        return self.root / check_id(file_id)[:2] / f"{file_id}.{fmt}"

    def local_path(self, file_id: str, fmt: str) -> Path:
        return self.path(file_id, fmt)

    def writer(self, file_id: str, fmt: str) -> LocalBlobWriter:
        return LocalBlobWriter(self, file_id, fmt)

    async def exists(self, file_id: str, fmt: str) -> bool:
        # A stat of microseconds, on every cache hit: a thread hop would cost more than it. os.path on a
        # string, because pathlib costs several times more.
        return os.path.isfile(  # noqa: ASYNC240
            f"{self._root_str}/{file_id[:2]}/{file_id}.{fmt}"
        )

    async def remove(self, file_id: str, fmt: str) -> None:
        self.path(file_id, fmt).unlink(missing_ok=True)

    async def sweep(self, keep: set[str]) -> int:
        """Remove temp files and every audio file whose id is not in `keep`; run before serving."""
        return await asyncio.get_running_loop().run_in_executor(None, self._sweep, keep)

    def _sweep(self, keep: set[str]) -> int:
        removed = 0
        for temp in self.spool_dir.iterdir():
            temp.unlink(missing_ok=True)
            removed += 1
        for sub in self.root.iterdir():
            if sub.name == TMP_DIR or not sub.is_dir():
                continue
            for audio in sub.iterdir():
                if audio.name.split(".", 1)[0] not in keep:
                    audio.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d leftover audio or temp files", removed)
        return removed


def open_blobs(settings: Settings) -> BlobStore:
    """The blob store the settings name (today: the data dir's audio/)."""
    return LocalBlobs(settings.audio_dir)
