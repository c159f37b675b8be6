"""The SQLite engine: one writer connection on its own thread, read-only connections on reader threads.

datasette's pattern: SQLite in WAL mode lets readers run beside the one writer, so reports (usage, metrics,
library pages) never queue in front of a write, and the health probe's write never waits behind a report.
Writes are serialised on the writer thread, each in one `BEGIN IMMEDIATE` transaction. The event loop never
waits for SQLite: every call runs on one of these threads.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from speccyd.storage.errors import StorageFull, StoreError
from speccyd.storage.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")

# A writer in another process (`speccyd purge`) may hold the lock briefly; wait for it instead of failing.
BUSY_TIMEOUT_MS = 5000
# Readers serve the lookups of requests (status, a file, a library page); two keep one long page from
# delaying the next lookup on 2 cores. Reports (usage, metrics, the admin CLI) have a reader of their own, so
# however many of them run at once, they queue behind each other, never in front of a request's lookup.
READERS = 2
REPORT_READERS = 1


def prepare(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode cannot corrupt the database; a power cut may lose the last commits only.
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")


def _storage_error(e: sqlite3.OperationalError) -> Exception:
    # SQLite rolls the transaction back, so a full disk costs the request, never the database.
    if e.sqlite_errorcode == sqlite3.SQLITE_FULL:
        return StorageFull(str(e))
    return e


class Engine:
    """Connections, threads and transactions; the queries are in the modules beside this one."""

    def __init__(self, path: Path, readers: int = READERS) -> None:
        self.path = path
        try:
            # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            prepare(self._db)
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        self._readers = readers
        self._writer: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._report_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_dbs: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this speccyd "
                f"understands ({SCHEMA_VERSION}); upgrade speccyd or restore a backup"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[number - 1](self._db)
                self._db.execute(f"PRAGMA user_version = {number}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # query_only: a bug that writes through a reader fails loudly instead of racing the writer.
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA query_only = ON")
            self._local.db = db
            with self._lock:
                self._reader_dbs.append(db)
        return db

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        # IMMEDIATE takes the write lock up front, so a read-then-write never fails half way with BUSY.
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction on the writer thread."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speccyd-db-write")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, self._transaction, fn)
        except sqlite3.OperationalError as e:
            raise _storage_error(e) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a read-only connection of a reader thread (it may BEGIN for a consistent snapshot)."""
        if self._reader_pool is None:
            self._reader_pool = ThreadPoolExecutor(max_workers=self._readers, thread_name_prefix="speccyd-db-read")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, lambda: fn(self._reader()))

    async def report(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Like `read`, on the report reader: for reports over many rows (usage, metrics, user lists)."""
        if self._report_pool is None:
            self._report_pool = ThreadPoolExecutor(max_workers=REPORT_READERS, thread_name_prefix="speccyd-db-report")
        return await asyncio.get_running_loop().run_in_executor(self._report_pool, lambda: fn(self._reader()))

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection, for maintenance run synchronously by the CLI (backup, restore)."""
        return self._db

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        for pool in (self._writer, self._reader_pool, self._report_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer = self._reader_pool = self._report_pool = None
        for db in self._reader_dbs:
            db.close()
        self._reader_dbs.clear()
        self._db.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
