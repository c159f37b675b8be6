"""All SQL lives here: the schema, its migrations, and every query speccyd makes.

The server uses one connection on one dedicated thread (`Store.run`), so the event loop never waits for
SQLite and writes are serialised without lock contention inside the process. The CLI opens its own
connection and calls the same methods directly; WAL lets it read and write while the server runs.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from speccyd.errors import StorageFull

P = ParamSpec("P")
T = TypeVar("T")

# A writer from the CLI (purge) may hold the lock briefly; wait for it instead of failing.
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used (newer than this program, unreadable, ...)."""


class UnknownUser(Exception):
    """A signed session names a user the database does not have (removed, or the database was reset)."""


def _m1_initial(db: sqlite3.Connection) -> None:
    statements = [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            key_enc BLOB NOT NULL,
            created_at REAL NOT NULL,
            last_seen REAL NOT NULL
        )""",
        """CREATE TABLE audio_files (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            content_hash TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('generating', 'ready', 'failed')),
            model TEXT NOT NULL,
            voice TEXT NOT NULL,
            format TEXT NOT NULL,
            speed REAL NOT NULL,
            instructions TEXT,
            text TEXT NOT NULL,
            characters INTEGER NOT NULL,
            size_bytes INTEGER,
            sha256 TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
        # One row per user and content: dedup is a constraint, not a hope.
        "CREATE UNIQUE INDEX audio_files_user_hash ON audio_files(user_id, content_hash)",
        "CREATE INDEX audio_files_expires ON audio_files(expires_at)",
        "CREATE INDEX audio_files_status ON audio_files(status)",
        # What was generated or served from cache, kept after the audio expires (usage, cost).
        """CREATE TABLE usage_log (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            at REAL NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('generated', 'cache_hit')),
            model TEXT NOT NULL,
            characters INTEGER NOT NULL
        )""",
        "CREATE INDEX usage_log_user_at ON usage_log(user_id, at)",
    ]
    # execute, not executescript: executescript commits first, which would break the migration's transaction.
    for statement in statements:
        db.execute(statement)
    db.execute("INSERT INTO meta (key, value) VALUES ('server_id', ?)", (str(uuid.uuid4()),))


# Append only: a migration that has shipped is never edited, and its position is its version.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1_initial]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class FileRow:
    id: str
    user_id: str
    content_hash: str
    status: str
    model: str
    voice: str
    format: str
    speed: float
    instructions: str | None
    text: str
    characters: int
    size_bytes: int | None
    sha256: str | None
    error: str | None
    created_at: float
    updated_at: float
    expires_at: float

    def is_expired(self, now: float) -> bool:
        return self.status != "generating" and self.expires_at <= now


@dataclass(frozen=True)
class NewFile:
    """What a generation request asks for; the row is created from it."""

    content_hash: str
    model: str
    voice: str
    format: str
    speed: float
    instructions: str | None
    text: str


@dataclass(frozen=True)
class Claim:
    """The outcome of asking for audio: an existing row, or a new generation to start."""

    row: FileRow
    created: bool
    replaced: FileRow | None  # an old failed or expired row whose audio file must now be removed


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    first_seen: float
    last_seen: float
    files_count: int
    storage_bytes: int
    generated_today: int
    characters_today: int


@dataclass(frozen=True)
class PurgeFilter:
    expired: bool = False
    all: bool = False
    user_id: str | None = None
    older_than: float | None = None  # seconds


_FILE_COLUMNS = ", ".join(FileRow.__dataclass_fields__)
_FILE_PLACEHOLDERS = ", ".join("?" * len(FileRow.__dataclass_fields__))


def _file(row: sqlite3.Row | None) -> FileRow | None:
    return None if row is None else FileRow(*row)


def _start_of_day(now: float) -> float:
    """Midnight UTC: "today" in usage figures is the UTC day, documented as such."""
    return now - (now % 86400)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._prepare()
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        self._executor: ThreadPoolExecutor | None = None

    def _prepare(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode cannot corrupt the database; a power cut may lose the last commits only.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this speccyd "
                f"understands ({SCHEMA_VERSION}); upgrade speccyd or restore a backup"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self._write():
                MIGRATIONS[number - 1](self._db)
                self._db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-then-write never fails half way with BUSY.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this store's methods on its own thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speccyd-db")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except sqlite3.OperationalError as e:
            # SQLite rolls the transaction back, so a full disk costs the request, never the database.
            if e.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise StorageFull(str(e)) from None
            raise

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._db.close()

    # --- meta ---

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    # --- users ---

    def upsert_user(self, key_hash: str, encrypt: Callable[[str], bytes], now: float) -> str:
        """The user for this key hash, created on first sight; `encrypt(user_id)` gives the stored key."""
        with self._write() as db:
            row = db.execute("SELECT id FROM users WHERE key_hash = ?", (key_hash,)).fetchone()
            if row is not None:
                db.execute("UPDATE users SET last_seen = ? WHERE id = ?", (now, row[0]))
                return str(row[0])
            user_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO users (id, key_hash, key_enc, created_at, last_seen) VALUES (?, ?, ?, ?, ?)",
                (user_id, key_hash, encrypt(user_id), now, now),
            )
            return user_id

    def user_key(self, user_id: str) -> bytes | None:
        row = self._db.execute("SELECT key_enc FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def user_keys(self) -> list[tuple[str, bytes]]:
        return [(r[0], bytes(r[1])) for r in self._db.execute("SELECT id, key_enc FROM users")]

    def rewrap_user_keys(self, rows: list[tuple[str, str, bytes]]) -> None:
        """Replace (user_id, key_hash, key_enc) for every user in one transaction (secret rotation)."""
        with self._write() as db:
            db.executemany("UPDATE users SET key_hash = ?, key_enc = ? WHERE id = ?", [(h, e, u) for u, h, e in rows])

    def find_users(self, prefix: str) -> list[str]:
        rows = self._db.execute("SELECT id FROM users WHERE id LIKE ? || '%'", (prefix.lower(),))
        return [r[0] for r in rows]

    # --- audio files ---

    def claim(self, user_id: str, new: NewFile, now: float, retention: float) -> Claim:
        """Find usable audio for this content or register a new generation, atomically.

        Ready and unexpired: its expiry moves to now + retention (a cache hit). Generating: returned as is,
        so concurrent identical requests share one upstream call. Otherwise a new row replaces the old one.
        """
        with self._write() as db:
            if db.execute("UPDATE users SET last_seen = ? WHERE id = ?", (now, user_id)).rowcount == 0:
                raise UnknownUser(user_id)
            old = _file(
                db.execute(
                    f"SELECT {_FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND content_hash = ?",
                    (user_id, new.content_hash),
                ).fetchone()
            )
            if old is not None and old.status == "generating":
                return Claim(old, created=False, replaced=None)
            if old is not None and old.status == "ready" and not old.is_expired(now):
                db.execute(
                    "UPDATE audio_files SET expires_at = ?, updated_at = ? WHERE id = ?",
                    (now + retention, now, old.id),
                )
                db.execute(
                    "INSERT INTO usage_log (user_id, at, kind, model, characters) VALUES (?, ?, 'cache_hit', ?, ?)",
                    (user_id, now, old.model, old.characters),
                )
                hit = FileRow(**{**old.__dict__, "expires_at": now + retention, "updated_at": now})
                return Claim(hit, created=False, replaced=None)
            if old is not None:
                db.execute("DELETE FROM audio_files WHERE id = ?", (old.id,))
            row = FileRow(
                id=uuid.uuid4().hex,
                user_id=user_id,
                status="generating",
                characters=len(new.text),
                size_bytes=None,
                sha256=None,
                error=None,
                created_at=now,
                updated_at=now,
                expires_at=now + retention,
                **new.__dict__,
            )
            db.execute(
                f"INSERT INTO audio_files ({_FILE_COLUMNS}) VALUES ({_FILE_PLACEHOLDERS})",
                tuple(row.__dict__.values()),
            )
            return Claim(row, created=True, replaced=old)

    def mark_ready(self, file_id: str, size: int, sha256: str, now: float, retention: float) -> bool:
        """False when the row is gone (deleted or purged meanwhile): the caller then removes the audio."""
        with self._write() as db:
            row = db.execute(
                "UPDATE audio_files SET status = 'ready', size_bytes = ?, sha256 = ?, error = NULL, "
                "updated_at = ?, expires_at = ? WHERE id = ? AND status = 'generating' "
                "RETURNING user_id, model, characters",
                (size, sha256, now, now + retention, file_id),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT INTO usage_log (user_id, at, kind, model, characters) VALUES (?, ?, 'generated', ?, ?)",
                (row[0], now, row[1], row[2]),
            )
            return True

    def mark_failed(self, file_id: str, error: str, now: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE audio_files SET status = 'failed', error = ?, updated_at = ? "
                "WHERE id = ? AND status = 'generating'",
                (error, now, file_id),
            )

    def get_file(self, file_id: str) -> FileRow | None:
        return _file(self._db.execute(f"SELECT {_FILE_COLUMNS} FROM audio_files WHERE id = ?", (file_id,)).fetchone())

    def get_by_hash(self, user_id: str, content_hash: str) -> FileRow | None:
        return _file(
            self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND content_hash = ?",
                (user_id, content_hash),
            ).fetchone()
        )

    def delete_file(self, user_id: str, file_id: str) -> FileRow | None:
        with self._write() as db:
            return _file(
                db.execute(
                    f"DELETE FROM audio_files WHERE id = ? AND user_id = ? RETURNING {_FILE_COLUMNS}",
                    (file_id, user_id),
                ).fetchone()
            )

    def generating(self) -> list[FileRow]:
        rows = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM audio_files WHERE status = 'generating'")
        return [FileRow(*r) for r in rows]

    def ready_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT id FROM audio_files WHERE status = 'ready'")}

    def _purge_where(self, f: PurgeFilter, now: float) -> tuple[str, list[Any]]:
        if f.all:
            return "1", []
        clauses: list[str] = []
        args: list[Any] = []
        if f.expired:
            clauses.append("(status != 'generating' AND expires_at <= ?)")
            args.append(now)
        if f.user_id is not None:
            clauses.append("user_id = ?")
            args.append(f.user_id)
        if f.older_than is not None:
            clauses.append("created_at <= ?")
            args.append(now - f.older_than)
        if not clauses:
            raise ValueError("a purge needs at least one criterion")
        return " AND ".join(clauses), args

    def select_purge(self, f: PurgeFilter, now: float) -> list[FileRow]:
        where, args = self._purge_where(f, now)
        return [FileRow(*r) for r in self._db.execute(f"SELECT {_FILE_COLUMNS} FROM audio_files WHERE {where}", args)]

    def delete_purge(self, f: PurgeFilter, now: float, limit: int) -> list[FileRow]:
        """Delete at most `limit` matching rows; small batches keep the write lock short."""
        where, args = self._purge_where(f, now)
        with self._write() as db:
            rows = db.execute(
                f"DELETE FROM audio_files WHERE id IN (SELECT id FROM audio_files WHERE {where} LIMIT ?) "
                f"RETURNING {_FILE_COLUMNS}",
                [*args, limit],
            ).fetchall()
        return [FileRow(*r) for r in rows]

    # --- usage ---

    def user_usage(self, user_id: str, now: float) -> UserUsage | None:
        return next(iter(self.usage_report(now, user_id)), None)

    def usage_report(self, now: float, user_id: str | None = None) -> list[UserUsage]:
        today = _start_of_day(now)
        rows = self._db.execute(
            """
            SELECT u.id, u.created_at, u.last_seen,
                (SELECT count(*) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                (SELECT coalesce(sum(size_bytes), 0) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                (SELECT count(*) FROM usage_log l WHERE l.user_id = u.id AND l.kind = 'generated' AND l.at >= ?),
                (SELECT coalesce(sum(characters), 0) FROM usage_log l
                    WHERE l.user_id = u.id AND l.kind = 'generated' AND l.at >= ?)
            FROM users u WHERE ? IS NULL OR u.id = ? ORDER BY u.created_at
            """,
            (today, today, user_id, user_id),
        )
        return [UserUsage(*r) for r in rows]
