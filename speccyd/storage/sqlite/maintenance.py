"""What backups and restores do to a SQLite file, synchronously (the CLI runs them, not the server)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from speccyd.storage.sqlite.engine import BUSY_TIMEOUT_MS


def online_backup(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's online backup API; a running server keeps writing meanwhile."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dest = sqlite3.connect(target)
    try:
        src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # All pages in one step: in WAL mode that read transaction never blocks the server's writes, while
        # a copy in several steps would start over each time the server commits in between.
        src.backup(dest)
    finally:
        dest.close()
        src.close()


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def ready_files(db: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
    """(id, format, size, sha256) of every ready file."""
    return [
        (r[0], r[1], int(r[2]), r[3])
        for r in db.execute("SELECT id, format, size_bytes, sha256 FROM audio_files WHERE status = 'ready'")
    ]


def forget_files(db: sqlite3.Connection, ids: list[str]) -> None:
    db.executemany("DELETE FROM audio_files WHERE id = ?", [(i,) for i in ids])


def integrity_check(db: sqlite3.Connection) -> list[str]:
    """Problems found by the full PRAGMA integrity_check; empty when the database is sound."""
    rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else rows
