"""The data directory's layout: private directories and the commented config.toml, created when missing; and
the lock a server holds on it while it serves."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from speccyd.config.settings import Settings, config_template
from speccyd.storage.blobs import make_private_dir

LOCK_FILE = "speccyd.lock"


class DataDirBusy(Exception):
    """Another process (a running `speccyd serve`) holds the data dir's lock."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"a speccyd server ({who}) is using {data_dir}; stop it first")
        self.holder = holder


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's lock, or raise DataDirBusy at once.

    flock(2) on a file in the data dir: the kernel drops it when the holder exits however it exits (SIGKILL,
    a crash), so there is never a stale lock to clean up; it works the same for the single binary and for
    PID 1 in a container. Two servers on one data dir would sweep each other's files and generate each
    other's jobs twice, and `init --force` under a running server would split users (it keeps its old
    secrets in memory), so both take it.
    """
    make_private_dir(data_dir)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise DataDirBusy(data_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message another process shows
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def is_initialized(settings: Settings) -> bool:
    return settings.db_path.exists() and settings.secrets_dir.is_dir()


def prepare_layout(settings: Settings) -> list[str]:
    """Create the data dir, secrets/ and audio/ (0700) and config.toml (0600) if missing; what was created."""
    created = []
    for directory in (settings.data_dir, settings.secrets_dir, settings.audio_dir):
        if not directory.exists():
            created.append(str(directory))
        make_private_dir(directory)
    if not settings.config_path.exists():
        settings.config_path.write_text(config_template())
        settings.config_path.chmod(0o600)
        created.append(str(settings.config_path))
    return created
