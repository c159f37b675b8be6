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
from collections.abc import Callable, Iterable, Iterator
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


def _m2_change_log(db: sqlite3.Connection) -> None:
    """A change sequence for device sync: every insert, update and delete of a file takes the next number.

    Triggers do the bookkeeping, so every writer (claim, mark_ready, delete, purge, cleanup, the CLI, a
    user's ON DELETE CASCADE) records its change in the same transaction without knowing about sync.
    """
    # Seconds since the epoch; unixepoch('subsec') needs SQLite 3.42, Debian 12 ships 3.40.
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    statements = [
        "CREATE TABLE change_clock (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)",
        "ALTER TABLE audio_files ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
        # Existing files get sequence numbers in creation order, so a first sync lists them oldest first.
        """UPDATE audio_files SET seq = (
            SELECT count(*) FROM audio_files o
            WHERE o.created_at < audio_files.created_at
               OR (o.created_at = audio_files.created_at AND o.id <= audio_files.id))""",
        "INSERT INTO change_clock (id, seq) SELECT 1, count(*) FROM audio_files",
        "CREATE INDEX audio_files_user_seq ON audio_files(user_id, seq)",
        """CREATE TABLE tombstones (
            seq INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL,
            file_id TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            reason TEXT NOT NULL CHECK (reason IN ('deleted', 'expired')),
            at REAL NOT NULL
        )""",
        "CREATE INDEX tombstones_user_seq ON tombstones(user_id, seq)",
        """CREATE TRIGGER audio_files_seq_insert AFTER INSERT ON audio_files BEGIN
            UPDATE change_clock SET seq = seq + 1;
            UPDATE audio_files SET seq = (SELECT seq FROM change_clock) WHERE id = NEW.id;
        END""",
        # The WHEN clause skips the trigger's own seq update (and the insert trigger's).
        """CREATE TRIGGER audio_files_seq_update AFTER UPDATE ON audio_files WHEN NEW.seq = OLD.seq BEGIN
            UPDATE change_clock SET seq = seq + 1;
            UPDATE audio_files SET seq = (SELECT seq FROM change_clock) WHERE id = NEW.id;
        END""",
        f"""CREATE TRIGGER audio_files_tombstone AFTER DELETE ON audio_files BEGIN
            UPDATE change_clock SET seq = seq + 1;
            INSERT INTO tombstones (seq, user_id, file_id, content_hash, reason, at) VALUES (
                (SELECT seq FROM change_clock), OLD.user_id, OLD.id, OLD.content_hash,
                CASE WHEN OLD.status != 'generating' AND OLD.expires_at <= {now} THEN 'expired' ELSE 'deleted' END,
                {now});
        END""",
    ]
    for statement in statements:
        db.execute(statement)


def _m3_accounting(db: sqlite3.Connection) -> None:
    """Tokens billed (when the upstream reports them), session revocation, per-user limit overrides."""
    statements = [
        "ALTER TABLE usage_log ADD COLUMN tokens INTEGER",
        # A session token issued at or before this time (epoch seconds) is refused: `speccyd users revoke`.
        "ALTER TABLE users ADD COLUMN sessions_valid_after REAL NOT NULL DEFAULT 0",
        # NULL: the server-wide setting applies; 0: no limit for this user; N: this user's own limit.
        "ALTER TABLE users ADD COLUMN limit_daily_chars INTEGER",
        "ALTER TABLE users ADD COLUMN limit_storage_bytes INTEGER",
        "ALTER TABLE users ADD COLUMN limit_max_files INTEGER",
        "CREATE INDEX usage_log_at ON usage_log(at)",
    ]
    for statement in statements:
        db.execute(statement)


# Append only: a migration that has shipped is never edited, and its position is its version.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1_initial, _m2_change_log, _m3_accounting]
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
class Hit:
    """A cache hit answered from memory, written later by `record_hits`."""

    file_id: str
    user_id: str
    model: str
    characters: int
    at: float
    expires_at: float


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
class Limits:
    """Per-user limits; 0 means none. As overrides, None means "the server-wide setting"."""

    daily_chars: int
    storage_bytes: int
    max_files: int


@dataclass(frozen=True)
class LimitOverrides:
    daily_chars: int | None = None
    storage_bytes: int | None = None
    max_files: int | None = None

    def apply(self, defaults: Limits) -> Limits:
        return Limits(
            defaults.daily_chars if self.daily_chars is None else self.daily_chars,
            defaults.storage_bytes if self.storage_bytes is None else self.storage_bytes,
            defaults.max_files if self.max_files is None else self.max_files,
        )


class QuotaExceeded(Exception):
    """A new generation would go over one of the user's limits; nothing was written."""

    def __init__(self, limit: str, allowed: int, used: int, frees_at: float | None) -> None:
        super().__init__(f"{limit} quota exceeded")
        self.limit = limit  # "daily_chars", "storage" or "max_files"
        self.allowed = allowed
        self.used = used
        self.frees_at = frees_at  # when the oldest kept file expires (storage and file limits)


@dataclass(frozen=True)
class UsageLine:
    """Usage events of one user, model and kind ('generated' or 'cache_hit') in a time window."""

    user_id: str
    model: str
    kind: str
    events: int
    characters: int
    tokens: int | None


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    created_at: float
    last_seen: float
    files_count: int
    storage_bytes: int
    sessions_valid_after: float
    overrides: LimitOverrides


@dataclass(frozen=True)
class PurgeFilter:
    expired: bool = False
    all: bool = False
    user_id: str | None = None
    older_than: float | None = None  # seconds


@dataclass(frozen=True)
class Tombstone:
    """A file that is gone (deleted by its user or a purge, or expired), as device sync reports it."""

    seq: int
    file_id: str
    content_hash: str
    reason: str
    at: float


@dataclass(frozen=True)
class ChangePage:
    """One page of a user's library changes, in change order."""

    files: list[tuple[int, FileRow]]  # (seq, row)
    tombstones: list[Tombstone]
    next_cursor: int
    has_more: bool


class CursorTooOld(Exception):
    """The cursor is older than the oldest kept tombstone, or newer than anything this database wrote."""


TOMBSTONES_PRUNED = "tombstones_pruned_seq"

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

    def server_id(self) -> str:
        """The UUID created with the database: this server's identity on the network (mDNS `id`)."""
        value = self.get_meta("server_id")
        if value is None:
            raise StoreError(f"database {self.path} has no server_id")
        return value

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

    def claim(self, user_id: str, new: NewFile, now: float, retention: float, limits: Limits | None = None) -> Claim:
        """Find usable audio for this content or register a new generation, atomically.

        Ready and unexpired: its expiry moves to now + retention (a cache hit). Generating: returned as is,
        so concurrent identical requests share one upstream call. Otherwise a new row replaces the old one,
        if the user's `limits` allow it (QuotaExceeded otherwise): checked in the same transaction, so
        concurrent requests cannot all slip under a limit together.
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
            if limits is not None:
                self._check_limits(db, user_id, len(new.text), limits, now)
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

    def record_hits(self, hits: Iterable[Hit]) -> None:
        """Write cache hits answered from memory: expiry bumps, last-seen times and usage records."""
        hits = list(hits)
        # Only the latest bump per file and per user matters; a busy second collapses to a few updates.
        latest_file = {h.file_id: h for h in sorted(hits, key=lambda h: h.at)}
        latest_user = {h.user_id: h.at for h in latest_file.values()}
        with self._write() as db:
            db.executemany(
                "UPDATE audio_files SET expires_at = max(expires_at, ?), updated_at = ? "
                "WHERE id = ? AND status = 'ready'",
                [(h.expires_at, h.at, h.file_id) for h in latest_file.values()],
            )
            db.executemany(
                "UPDATE users SET last_seen = max(last_seen, ?) WHERE id = ?",
                [(at, u) for u, at in latest_user.items()],
            )
            db.executemany(
                "INSERT INTO usage_log (user_id, at, kind, model, characters) VALUES (?, ?, 'cache_hit', ?, ?)",
                [(h.user_id, h.at, h.model, h.characters) for h in hits],
            )

    def _check_limits(
        self, db: sqlite3.Connection, user_id: str, characters: int, defaults: Limits, now: float
    ) -> None:
        row = db.execute(
            "SELECT limit_daily_chars, limit_storage_bytes, limit_max_files FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        limits = LimitOverrides(*row).apply(defaults) if row is not None else defaults
        if limits.daily_chars:
            # In-flight generations count too: a burst of new requests cannot all pass before any finishes.
            used = db.execute(
                "SELECT (SELECT coalesce(sum(characters), 0) FROM usage_log "
                "        WHERE user_id = ? AND kind = 'generated' AND at >= ?) + "
                "       (SELECT coalesce(sum(characters), 0) FROM audio_files "
                "        WHERE user_id = ? AND status = 'generating')",
                (user_id, _start_of_day(now), user_id),
            ).fetchone()[0]
            if used + characters > limits.daily_chars:
                raise QuotaExceeded("daily_chars", limits.daily_chars, used, None)
        if limits.storage_bytes or limits.max_files:
            files, stored, first_expiry = db.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0), min(expires_at) FROM audio_files "
                "WHERE user_id = ? AND (status = 'generating' OR (status = 'ready' AND expires_at > ?))",
                (user_id, now),
            ).fetchone()
            if limits.storage_bytes and stored >= limits.storage_bytes:
                raise QuotaExceeded("storage", limits.storage_bytes, stored, first_expiry)
            if limits.max_files and files >= limits.max_files:
                raise QuotaExceeded("max_files", limits.max_files, files, first_expiry)

    def mark_ready(
        self, file_id: str, size: int, sha256: str, now: float, retention: float, tokens: int | None = None
    ) -> bool:
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
                "INSERT INTO usage_log (user_id, at, kind, model, characters, tokens) "
                "VALUES (?, ?, 'generated', ?, ?, ?)",
                (row[0], now, row[1], row[2], tokens),
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

    # --- device sync ---

    def changes_since(self, user_id: str, since: int, limit: int) -> ChangePage:
        """Files changed and files removed after `since`, merged in change order, at most `limit` of both."""
        # One read transaction: both tables and the clock come from the same snapshot, even while the
        # CLI purges from another process.
        self._db.execute("BEGIN")
        try:
            clock = int(self._db.execute("SELECT seq FROM change_clock").fetchone()[0])
            pruned = int(self.get_meta(TOMBSTONES_PRUNED) or 0)
            if since > clock:
                raise CursorTooOld(f"cursor {since} is ahead of this server's changes ({clock})")
            if 0 < since < pruned:
                raise CursorTooOld(f"cursor {since} is older than the kept deletions (from {pruned})")
            files = [
                (int(r[0]), FileRow(*r[1:]))
                for r in self._db.execute(
                    f"SELECT seq, {_FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (user_id, since, limit + 1),
                )
            ]
            tombstones = [
                Tombstone(*r)
                for r in self._db.execute(
                    "SELECT seq, file_id, content_hash, reason, at FROM tombstones "
                    "WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (user_id, since, limit + 1),
                )
            ]
        finally:
            self._db.execute("COMMIT")
        merged = sorted([seq for seq, _ in files] + [t.seq for t in tombstones])
        has_more = len(merged) > limit
        last = merged[limit - 1] if has_more else (merged[-1] if merged else since)
        return ChangePage(
            files=[(seq, row) for seq, row in files if seq <= last],
            tombstones=[t for t in tombstones if t.seq <= last],
            next_cursor=last,
            has_more=has_more,
        )

    def prune_tombstones(self, before: float) -> int:
        """Forget deletions older than `before`; cursors from before them must sync from the start."""
        with self._write() as db:
            row = db.execute("SELECT count(*), max(seq) FROM tombstones WHERE at < ?", (before,)).fetchone()
            if not row[0]:
                return 0
            db.execute("DELETE FROM tombstones WHERE seq <= ?", (row[1],))
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (TOMBSTONES_PRUNED, str(row[1])),
            )
            return int(row[0])

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

    def usage_lines(self, since: float, user_id: str | None = None) -> list[UsageLine]:
        """Usage events since `since`, summed per user, model and kind."""
        rows = self._db.execute(
            "SELECT user_id, model, kind, count(*), coalesce(sum(characters), 0), sum(tokens) FROM usage_log "
            "WHERE at >= ? AND (? IS NULL OR user_id = ?) GROUP BY user_id, model, kind ORDER BY user_id, model, kind",
            (since, user_id, user_id),
        )
        return [UsageLine(*r) for r in rows]

    def storage_totals(self) -> tuple[int, int]:
        """(ready files, their bytes) for the whole server."""
        files, size = self._db.execute(
            "SELECT count(*), coalesce(sum(size_bytes), 0) FROM audio_files WHERE status = 'ready'"
        ).fetchone()
        return int(files), int(size)

    # --- user administration ---

    def user_infos(self, user_id: str | None = None) -> list[UserInfo]:
        rows = self._db.execute(
            """
            SELECT u.id, u.created_at, u.last_seen,
                (SELECT count(*) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                (SELECT coalesce(sum(size_bytes), 0) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                u.sessions_valid_after, u.limit_daily_chars, u.limit_storage_bytes, u.limit_max_files
            FROM users u WHERE ? IS NULL OR u.id = ? ORDER BY u.created_at
            """,
            (user_id, user_id),
        )
        return [UserInfo(r[0], r[1], r[2], r[3], r[4], r[5], LimitOverrides(r[6], r[7], r[8])) for r in rows]

    def user_overrides(self, user_id: str) -> LimitOverrides:
        row = self._db.execute(
            "SELECT limit_daily_chars, limit_storage_bytes, limit_max_files FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        return LimitOverrides() if row is None else LimitOverrides(*row)

    def set_limits(self, user_id: str, changes: dict[str, int | None]) -> None:
        """Set some of daily_chars, storage_bytes, max_files; None puts one back to the server default."""
        columns = {
            "daily_chars": "limit_daily_chars",
            "storage_bytes": "limit_storage_bytes",
            "max_files": "limit_max_files",
        }
        if not changes:
            return
        assignments = ", ".join(f"{columns[name]} = ?" for name in changes)  # names come from the fixed table
        with self._write() as db:
            db.execute(f"UPDATE users SET {assignments} WHERE id = ?", [*changes.values(), user_id])

    def revoke_sessions(self, user_id: str, now: float) -> None:
        with self._write() as db:
            db.execute("UPDATE users SET sessions_valid_after = ? WHERE id = ?", (now, user_id))

    def revocations(self) -> dict[str, float]:
        """user id -> time before which that user's sessions are void; "*" holds the server-wide time."""
        result = {r[0]: float(r[1]) for r in self._db.execute(
            "SELECT id, sessions_valid_after FROM users WHERE sessions_valid_after > 0"
        )}  # fmt: skip
        everyone = self.get_meta(SESSIONS_VALID_AFTER)
        if everyone:
            result["*"] = float(everyone)
        return result

    def user_exists(self, user_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is not None

    # --- operations ---

    def probe_write(self, now: float) -> None:
        """A real write and commit: fails when the disk is full or read-only, or the file is gone."""
        self.set_meta("health_probe", repr(now))

    def backup_to(self, path: Path) -> None:
        """A consistent copy through SQLite's online backup API; the server keeps writing meanwhile."""
        target = sqlite3.connect(path)
        try:
            # All pages in one step: in WAL mode that read transaction never blocks the server's writes, while
            # a copy in several steps would start over each time the server commits in between.
            self._db.backup(target)
        finally:
            target.close()

    def ready_files(self) -> list[tuple[str, str, int, str]]:
        """(id, format, size, sha256) of every ready file."""
        return [
            (r[0], r[1], int(r[2]), r[3])
            for r in self._db.execute("SELECT id, format, size_bytes, sha256 FROM audio_files WHERE status = 'ready'")
        ]

    def forget_files(self, ids: list[str]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM audio_files WHERE id = ?", [(i,) for i in ids])

    def integrity_check(self) -> list[str]:
        """Problems found by the full PRAGMA integrity_check; empty when the database is sound."""
        rows = [str(r[0]) for r in self._db.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows


SESSIONS_VALID_AFTER = "sessions_valid_after"


# Only these mean the file itself is damaged; "cannot open" or "locked" must never move a good database aside.
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def quick_check(path: Path) -> str | None:
    """None when the database at `path` passes PRAGMA quick_check (or does not exist), else what is wrong.

    Errors other than corruption (permissions, a full disk, ...) are raised as StoreError.
    """
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorcode", None) in _CORRUPT_CODES:
            return str(e)
        raise StoreError(f"cannot check database {path}: {e}") from None
    return None if rows == ["ok"] else "; ".join(rows[:5])


def quarantine(path: Path, stamp: str) -> Path:
    """Move a database and its -wal/-shm files aside as <name>.corrupt-<stamp>; returns the new path."""
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, moved.with_name(moved.name + suffix))
    return moved
