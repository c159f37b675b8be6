"""What must hold in a data dir at every quiet moment: the checks the fault, crash and disk suites share."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from speccyd.storage.blobs import TMP_DIR


@dataclass(frozen=True)
class ReadyFile:
    id: str
    user_id: str
    format: str
    size: int
    sha256: str


def _connect(db_path: Path) -> sqlite3.Connection:
    if str(db_path).startswith("/proc/"):
        # SQLite resolves the /proc/<pid>/root symlink and would open the file outside the server's mount
        # namespace; read a copy instead (the server is idle when a check runs).
        copy = Path(tempfile.mkdtemp()) / db_path.name
        for suffix in ("", "-wal"):
            source = db_path.with_name(db_path.name + suffix)
            if source.exists():
                shutil.copyfile(source, copy.with_name(copy.name + suffix))
        db_path = copy
    # Read-only, so a check can never repair (or damage) what it is checking.
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)


def ready_files(db_path: Path) -> dict[str, ReadyFile]:
    db = _connect(db_path)
    try:
        rows = db.execute(
            "SELECT id, user_id, format, size_bytes, sha256 FROM audio_files WHERE status = 'ready'"
        ).fetchall()
    finally:
        db.close()
    return {r[0]: ReadyFile(*r) for r in rows}


def statuses(db_path: Path) -> dict[str, str]:
    db = _connect(db_path)
    try:
        return dict(db.execute("SELECT id, status FROM audio_files").fetchall())
    finally:
        db.close()


def audio_files(data_dir: Path) -> dict[str, Path]:
    """Every audio file on disk by id (temp files excluded)."""
    found: dict[str, Path] = {}
    root = data_dir / "audio"
    for sub in root.iterdir():
        if sub.is_dir() and sub.name != TMP_DIR:
            for path in sub.iterdir():
                found[path.name.split(".", 1)[0]] = path
    return found


def temp_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "audio" / TMP_DIR).iterdir())


def check_data_dir(data_dir: Path, *, quiet: bool = True, settled: bool = True) -> dict[str, ReadyFile]:
    """Assert the storage invariants; `quiet`: no generation in progress (no temp files).

    `settled=False` is the state right after a SIGKILL: a file renamed into place whose row was not yet
    marked ready may exist until the next start sweeps it, but a ready row must still have its whole file.
    """
    db_path = data_dir / "speccyd.db"
    db = _connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    ready = ready_files(db_path)
    on_disk = audio_files(data_dir)
    for file_id, row in ready.items():
        assert file_id in on_disk, f"ready row {file_id} has no file"
        data = on_disk[file_id].read_bytes()
        assert len(data) == row.size, f"{file_id}: {len(data)} bytes on disk, {row.size} recorded"
        assert hashlib.sha256(data).hexdigest() == row.sha256, f"{file_id}: content differs from its hash"
        assert on_disk[file_id].suffix == f".{row.format}"
    if not settled:
        return ready
    strays = set(on_disk) - set(ready)
    assert not strays, f"audio files without a ready row: {sorted(strays)}"
    if quiet:
        assert not temp_files(data_dir), f"temp files left: {temp_files(data_dir)}"
    return ready
