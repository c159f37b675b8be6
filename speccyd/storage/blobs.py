"""Audio files on disk: server-chosen names only, written to a temp file and renamed into place."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
_ID = re.compile(r"^[0-9a-f]{32}$")


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


class BlobWriter:
    """A temp file that counts and hashes what is written; `commit` makes it the file's audio."""

    def __init__(self, blobs: Blobs, file_id: str, fmt: str) -> None:
        self.final = blobs.path(file_id, fmt)
        self.temp = blobs.root / TMP_DIR / f"{file_id}.{secrets.token_hex(4)}.part"
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

    def commit(self) -> None:
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

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.temp.unlink(missing_ok=True)


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_str = str(root)
        make_private_dir(root)
        make_private_dir(root / TMP_DIR)

    def path(self, file_id: str, fmt: str) -> Path:
        if not _ID.match(file_id):  # ids are ours, but a path must never follow anything else
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id[:2] / f"{file_id}.{fmt}"

    def writer(self, file_id: str, fmt: str) -> BlobWriter:
        return BlobWriter(self, file_id, fmt)

    def exists(self, file_id: str, fmt: str) -> bool:
        # os.path on a string: this runs on every cache hit, and pathlib costs several times more.
        return os.path.isfile(f"{self._root_str}/{file_id[:2]}/{file_id}.{fmt}")

    def remove(self, file_id: str, fmt: str) -> None:
        self.path(file_id, fmt).unlink(missing_ok=True)

    def sweep(self, keep: Iterable[str]) -> int:
        """Remove temp files and every audio file whose id is not in `keep`; run before serving."""
        keep = set(keep)
        removed = 0
        for temp in (self.root / TMP_DIR).iterdir():
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
