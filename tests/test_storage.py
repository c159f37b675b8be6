"""The SQLite database: pragmas, migrations, refusing newer databases, readers beside the writer; files on disk."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from speccyd.config.settings import Settings, load_settings
from speccyd.security.provision import init_data_dir
from speccyd.storage.blobs import LocalBlobs
from speccyd.storage.errors import StoreError
from speccyd.storage.records import NewFile
from speccyd.storage.sqlite import SqliteDatabase
from speccyd.storage.sqlite.maintenance import schema_version
from speccyd.storage.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION


async def test_pragmas_and_schema(tmp_path: Path) -> None:
    """A new database is in WAL mode with foreign keys on, busy_timeout set and migrated to the latest version."""
    store = SqliteDatabase(tmp_path / "db.sqlite")
    db = store.connection
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert schema_version(db) == SCHEMA_VERSION == len(MIGRATIONS)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert {"audio_files_user_hash", "audio_files_expires", "audio_files_status"} <= indexes
    assert await store.get_meta("server_id")
    await store.close()


async def test_reopening_keeps_data_and_version(tmp_path: Path) -> None:
    """Opening an existing database runs no migration again and keeps its rows and server id."""
    first = SqliteDatabase(tmp_path / "db.sqlite")
    server_id = await first.get_meta("server_id")
    await first.upsert_user("hash", lambda uid: b"enc", 1.0)
    await first.close()
    again = SqliteDatabase(tmp_path / "db.sqlite")
    assert await again.get_meta("server_id") == server_id
    assert await again.find_users("") != []
    await again.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    """A database written by a newer speccyd is refused with a message that says so."""
    SqliteDatabase(tmp_path / "db.sqlite").shutdown()
    raw = sqlite3.connect(tmp_path / "db.sqlite")
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this speccyd"):
        SqliteDatabase(tmp_path / "db.sqlite")


def test_garbage_file_is_refused_cleanly(tmp_path: Path) -> None:
    """A file that is not a database gives a StoreError, not a crash."""
    (tmp_path / "db.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        SqliteDatabase(tmp_path / "db.sqlite")


async def test_one_row_per_user_and_content(tmp_path: Path) -> None:
    """Claiming the same content twice returns the row in flight instead of a second one."""
    store = SqliteDatabase(tmp_path / "db.sqlite")
    user = await store.upsert_user("hash", lambda uid: b"enc", 1.0)
    new = NewFile("c" * 64, "tts-1", "alloy", "mp3", 1.0, None, "text")
    first = await store.claim(user, new, 10.0, 100.0)
    second = await store.claim(user, new, 11.0, 100.0)
    assert first.created and not second.created
    assert second.row.id == first.row.id
    with pytest.raises(sqlite3.IntegrityError):
        store.connection.execute(
            "INSERT INTO audio_files (id, user_id, content_hash, status, model, voice, format, speed, text, "
            "characters, created_at, updated_at, expires_at) SELECT 'x' || id, user_id, content_hash, status, model, "
            "voice, format, speed, text, characters, created_at, updated_at, expires_at FROM audio_files"
        )
    await store.close()


async def test_reports_read_beside_a_held_write_lock(tmp_path: Path) -> None:
    """A report reads on its own connection while another writer holds the write lock (WAL readers)."""
    store = SqliteDatabase(tmp_path / "db.sqlite")
    user = await store.upsert_user("hash", lambda uid: b"enc", 1.0)
    blocker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # as `speccyd purge` in another process would, mid-transaction
    try:
        assert [r.user_id for r in await store.usage_report(2.0)] == [user]
        assert await store.find_users(user[:6]) == [user]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        await store.close()


async def test_readers_cannot_write(tmp_path: Path) -> None:
    """Reader connections are read-only: a write through one fails instead of racing the writer thread."""
    store = SqliteDatabase(tmp_path / "db.sqlite")
    with pytest.raises(sqlite3.OperationalError):
        await store.read(lambda db: db.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')"))
    await store.close()


def _settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "data", env={})


async def test_init_creates_private_layout(tmp_path: Path) -> None:
    """init creates the data dir 0700, secrets and config 0600, and the migrated database."""
    settings = _settings(tmp_path)
    await init_data_dir(settings)
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.secrets_dir.stat().st_mode) == 0o700
    for secret in settings.secrets_dir.iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.db_path.stat().st_mode) == 0o600
    with sqlite3.connect(settings.db_path) as db:
        assert schema_version(db) == SCHEMA_VERSION


async def test_init_twice_changes_nothing(tmp_path: Path) -> None:
    """Running init again reports nothing created and keeps the secrets and config byte for byte."""
    settings = _settings(tmp_path)
    await init_data_dir(settings)
    before = {p: p.read_bytes() for p in settings.secrets_dir.iterdir()}
    settings.config_path.write_text("port = 9000\n")
    report = await init_data_dir(settings)
    assert report.created == []
    assert {p: p.read_bytes() for p in settings.secrets_dir.iterdir()} == before
    assert settings.config_path.read_text() == "port = 9000\n"


async def test_blob_writer_commits_atomically(tmp_path: Path) -> None:
    """Audio appears under its final name only when committed; a discarded write leaves nothing."""
    blobs = LocalBlobs(tmp_path / "audio")
    writer = blobs.writer("a" * 32, "mp3")
    writer.write(b"abc")
    assert not writer.final.exists()
    await writer.commit()
    assert writer.final.read_bytes() == b"abc"
    assert stat.S_IMODE(writer.final.stat().st_mode) == 0o600
    discarded = blobs.writer("b" * 32, "mp3")
    discarded.write(b"partial")
    discarded.discard()
    assert not discarded.final.exists()
    assert list((tmp_path / "audio" / "tmp").iterdir()) == []


def test_blob_paths_refuse_foreign_ids(tmp_path: Path) -> None:
    """A path is only ever built from a server-generated id."""
    blobs = LocalBlobs(tmp_path / "audio")
    for bad in ("../../etc/passwd", "A" * 32, "a" * 31, ""):
        with pytest.raises(ValueError):
            blobs.path(bad, "mp3")


async def test_sweep_removes_orphans_and_temp_files(tmp_path: Path) -> None:
    """At start-up, temp files and audio without a ready row are removed; ready audio stays."""
    blobs = LocalBlobs(tmp_path / "audio")
    for file_id in ("a" * 32, "b" * 32):
        writer = blobs.writer(file_id, "mp3")
        writer.write(b"x")
        await writer.commit()
    (tmp_path / "audio" / "tmp" / "left.part").write_bytes(b"x")
    assert await blobs.sweep({"a" * 32}) == 2
    assert blobs.path("a" * 32, "mp3").exists()
    assert not blobs.path("b" * 32, "mp3").exists()


async def test_rotation_rewraps_every_readable_key_and_skips_the_rest(tmp_path: Path) -> None:
    """init --force re-encrypts each stored key under the new secrets (same user, new lookup hash); a key the
    old secrets cannot decrypt is left as it is and counted out."""
    from speccyd.security.crypto import ServerSecrets

    settings = _settings(tmp_path)
    await init_data_dir(settings)
    old = ServerSecrets.load(settings.secrets_dir)
    db = SqliteDatabase(settings.db_path)
    alice = await db.upsert_user(old.key_lookup_hash("sk-alice"), lambda uid: old.encrypt_key("sk-alice", uid), 1.0)
    await db.upsert_user("lost-hash", lambda uid: b"not a ciphertext", 1.0)
    report = await init_data_dir(settings, force=True)
    assert report.rotated_users == 1
    new = ServerSecrets.load(settings.secrets_dir)
    assert new.session_key != old.session_key and new.encryption_key != old.encryption_key
    assert await db.upsert_user(new.key_lookup_hash("sk-alice"), lambda uid: b"unused", 2.0) == alice
    blob = await db.user_key(alice)
    assert blob is not None and new.decrypt_key(blob, alice) == "sk-alice"
    await db.close()


def _v1_hash(model: str, voice: str, fmt: str, speed: float, instructions: str | None, text: str) -> str:
    import hashlib

    return hashlib.sha256("\n".join([model, voice, fmt, f"{speed:.2f}", instructions or "", text]).encode()).hexdigest()


async def test_migration_5_rehashes_every_file_idempotently(tmp_path: Path) -> None:
    """A version-4 database's files get their v2 content hash once, each reported to sync as a change; running
    the migration again changes nothing."""
    from speccyd.storage.contenthash import content_hash_v2
    from speccyd.storage.sqlite.migrations import _m5_content_hash_v2
    from tests.conftest import old_database

    path = tmp_path / "db.sqlite"
    raw = old_database(path, 4)
    raw.execute("INSERT INTO users (id, key_hash, key_enc, created_at, last_seen) VALUES ('u', 'h', x'00', 0, 0)")
    rows = [
        (f"{n:032x}", "gpt-4o-mini-tts", "coral", "opus", 0.5 + n % 3 / 4, f"instr\n{n}" if n % 2 else None,
         f"text {n}\nline two ✓")
        for n in range(20_000)
    ]  # fmt: skip
    raw.execute("BEGIN")  # one transaction: 20,000 commits would take a minute
    raw.executemany(
        "INSERT INTO audio_files (id, user_id, content_hash, status, model, voice, format, speed, instructions, "
        "text, characters, created_at, updated_at, expires_at) "
        "VALUES (?, 'u', ?, 'ready', ?, ?, ?, ?, ?, ?, 1, 0, 0, 9)",
        [(r[0], _v1_hash(*r[1:]), *r[1:]) for r in rows],
    )
    raw.execute("COMMIT")
    clock_before = raw.execute("SELECT seq FROM change_clock").fetchone()[0]
    raw.close()

    db = SqliteDatabase(path)
    stored = {r[0]: r[1] for r in db.connection.execute("SELECT id, content_hash FROM audio_files")}
    assert stored == {r[0]: content_hash_v2(*r[1:]) for r in rows}
    clock_after = db.connection.execute("SELECT seq FROM change_clock").fetchone()[0]
    assert clock_after == clock_before + len(rows)  # every file is sent to syncing devices again
    _m5_content_hash_v2(db.connection)  # again: nothing to change, no change numbers spent
    assert db.connection.execute("SELECT seq FROM change_clock").fetchone()[0] == clock_after
    await db.close()


def test_migration_5_survives_duplicate_content(tmp_path: Path) -> None:
    """Two rows of one user with the same content (only a crafted file has them) leave one row, not a crash."""
    from tests.conftest import old_database

    path = tmp_path / "db.sqlite"
    raw = old_database(path, 4)
    raw.execute("INSERT INTO users (id, key_hash, key_enc, created_at, last_seen) VALUES ('u', 'h', x'00', 0, 0)")
    for n in range(3):
        raw.execute(
            "INSERT INTO audio_files (id, user_id, content_hash, status, model, voice, format, speed, text, "
            "characters, created_at, updated_at, expires_at) "
            "VALUES (?, 'u', ?, 'ready', 'tts-1', 'alloy', 'mp3', 1.0, 'same', 4, 0, 0, 9)",
            (f"{n:032x}", f"{n:064x}"),
        )
    raw.close()
    db = SqliteDatabase(path)
    assert db.connection.execute("SELECT count(*) FROM audio_files").fetchone()[0] == 1
    db.shutdown()


async def test_reports_run_on_their_own_reader_never_in_front_of_lookups(tmp_path: Path) -> None:
    """While a report holds the report reader, a request's lookup is answered at once from its own reader."""
    import asyncio
    import threading

    store = SqliteDatabase(tmp_path / "db.sqlite")
    release = threading.Event()
    held = asyncio.ensure_future(store.report(lambda db: release.wait(10)))
    second = asyncio.ensure_future(store.usage_lines(0.0))  # queues behind the first report
    try:
        lookup = await asyncio.wait_for(store.get_by_hash("nobody", "0" * 64), 2)
        assert lookup is None and not held.done() and not second.done()
    finally:
        release.set()
        await held
        await second
        await store.close()


async def test_usage_is_rolled_up_by_day_and_reports_keep_their_figures(tmp_path: Path) -> None:
    """Raw usage from before yesterday moves into daily rows in small batches; day-aligned windows report the
    same figures before and after, today's quota reads stay exact, and tokens and failures are kept."""
    import sqlite3 as sq

    from speccyd.generation.cleanup import ROLL_UP_BATCH, roll_up_usage

    store = SqliteDatabase(tmp_path / "db.sqlite")
    raw = sq.connect(tmp_path / "db.sqlite", isolation_level=None)
    for user in ("a", "b"):
        raw.execute("INSERT INTO users (id, key_hash, key_enc, created_at, last_seen) VALUES (?, ?, x'00', 0, 0)",
                    (user, user))  # fmt: skip
    now = 1_800_000_000.0 + 3600 * 5  # 05:00 UTC
    today = now - now % 86400
    kinds = ["generated", "cache_hit", "failed"]
    rows = [
        (("a", "b")[n % 2], today - 40 * 86400 + n * 617.0, kinds[n % 3], ("tts-1", "gpt-4o-mini-tts")[n % 5 == 0],
         n % 97 + 1, *((n, 3 * n) if n % 7 == 0 else (None, None)))
        for n in range(int(40 * 86400 / 617) + 9)
    ]  # fmt: skip
    raw.execute("BEGIN")
    raw.executemany(
        "INSERT INTO usage_log (user_id, at, kind, model, characters, input_tokens, output_tokens, tokens) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, CASE WHEN ?6 IS NULL THEN NULL ELSE ?6 + ?7 END)",
        rows,
    )
    raw.execute("COMMIT")
    windows = [today - d * 86400 for d in (1, 7, 30, 45)]
    before = [await store.usage_lines(since) for since in windows]
    today_before = await store.usage_report(now)

    moved = await roll_up_usage(store, now)
    left = raw.execute("SELECT min(at), count(*) FROM usage_log").fetchone()
    assert moved > ROLL_UP_BATCH and moved + left[1] == len(rows)
    assert left[0] >= today - 86400  # yesterday and today stay raw
    assert [await store.usage_lines(since) for since in windows] == before
    assert await store.usage_report(now) == today_before
    assert await roll_up_usage(store, now) == 0  # nothing more to do
    raw.close()
    await store.close()
