"""All SQL lives here: every query speccyd makes (the schema's migrations are in `migrations.py`).

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
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from speccyd.storage.migrations import MIGRATIONS, SCHEMA_VERSION
from speccyd.storage.records import (
    ChangePage,
    Claim,
    CursorTooOld,
    FileRow,
    Hit,
    LimitOverrides,
    Limits,
    NewFile,
    PurgeFilter,
    QuotaExceeded,
    Tombstone,
    UsageLine,
    UserInfo,
    UserUsage,
)
from speccyd.web.errors import StorageFull

# The records and migrations are re-exported: callers import the storage layer from one place.
__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ChangePage",
    "Claim",
    "CursorTooOld",
    "FileRow",
    "Hit",
    "LimitOverrides",
    "Limits",
    "NewFile",
    "PurgeFilter",
    "QuotaExceeded",
    "Store",
    "StoreError",
    "Tombstone",
    "UnknownUser",
    "UsageLine",
    "UserInfo",
    "UserUsage",
    "quarantine",
    "quick_check",
]

P = ParamSpec("P")
T = TypeVar("T")

# A writer from the CLI (purge) may hold the lock briefly; wait for it instead of failing.
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used (newer than this program, unreadable, ...)."""


class UnknownUser(Exception):
    """A signed session names a user the database does not have (removed, or the database was reset)."""


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
