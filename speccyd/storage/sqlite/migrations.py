"""The schema, as an ordered list of small migrations; `PRAGMA user_version` records how many have run.

Only `engine.py` runs them (tests build old databases from them).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable

from speccyd.storage.contenthash import content_hash_v2


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


def _m4_failure_codes(db: sqlite3.Connection) -> None:
    """Why a generation failed, as data: a stable code and the upstream's HTTP status in their own columns.

    Rows that failed before this version get their code from the message once, here; nothing parses it later.
    """
    statements = [
        "ALTER TABLE audio_files ADD COLUMN error_code TEXT",
        "ALTER TABLE audio_files ADD COLUMN upstream_status INTEGER",
        # "upstream error 429: ..." (after an optional "chunk i of n: ") was how the status travelled.
        """UPDATE audio_files SET upstream_status = CAST(substr(error, instr(error, 'upstream error ') + 15, 3)
            AS INTEGER) WHERE status = 'failed' AND instr(error, 'upstream error ') > 0""",
        """UPDATE audio_files SET error_code = CASE
            WHEN error LIKE 'storage_full:%' THEN 'storage_full'
            WHEN error LIKE '%upstream timed out%' OR error LIKE '%upstream too slow%' THEN 'upstream_timeout'
            WHEN error LIKE '%upstream connection failed%' THEN 'upstream_unreachable'
            WHEN upstream_status IN (400, 401, 403, 404, 422) THEN 'upstream_refused'
            WHEN upstream_status IS NOT NULL THEN 'upstream_failed'
            WHEN error LIKE 'internal error%' THEN 'internal_error'
            WHEN error LIKE '%cannot use this user''s key%' THEN 'key_unusable'
            ELSE 'upstream_bad_audio' END
        WHERE status = 'failed'""",
    ]
    for statement in statements:
        db.execute(statement)


def _m5_content_hash_v2(db: sqlite3.Connection) -> None:
    """Every file's content hash in the unambiguous v2 encoding (storage/contenthash.py), computed from its row.

    Idempotent (a row that already has its v2 hash is not touched) and streamed in batches: 100,000 files
    take about three seconds. Each changed row takes a new change number (the seq trigger), so syncing devices
    are sent every file again with its new hash. Tombstones keep the hash they were written with.
    """
    # In change order, so the new change numbers keep the order devices saw; in batches, each read whole
    # before its updates (a statement still reading a table the same connection updates is undefined).
    ids = [r[0] for r in db.execute("SELECT id FROM audio_files ORDER BY seq, rowid")]
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        fields = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT id, model, voice, format, speed, instructions, text, content_hash FROM audio_files "
                f"WHERE id IN ({', '.join('?' * len(batch))})",
                batch,
            )
        }
        changed = [
            (new, file_id) for file_id in batch if (new := content_hash_v2(*fields[file_id][:6])) != fields[file_id][6]
        ]
        # Two rows of one user with the same content cannot both exist (v1 hashed the same content alike), but
        # a hand-edited or crafted file must not stop the server from starting: the later duplicate goes
        # (its audio, without a row, is swept at start).
        updated = db.executemany("UPDATE OR IGNORE audio_files SET content_hash = ? WHERE id = ?", changed).rowcount
        if updated < len(changed):
            for new, file_id in changed:
                db.execute("DELETE FROM audio_files WHERE id = ? AND content_hash != ?", (file_id, new))


def _m6_accounting_v2(db: sqlite3.Connection) -> None:
    """Usage that counts from the moment text goes upstream, daily roll-ups, reservations and token counts.

    - usage_log is rebuilt (a CHECK cannot be altered in SQLite) with kind 'failed' (sent upstream, no audio),
      the file it is about (its tokens and its fate are written to it later) and input/output tokens.
    - usage_daily holds whole UTC days of usage summed per user, model and kind; the cleanup moves raw rows
      older than yesterday into it, so reports read a few rows per day instead of one per request.
    - audio_files.reserved_bytes: the expected size of audio still being generated (storage_quota);
      input_tokens/output_tokens: what the upstream billed for it, when it said.
    """
    statements = [
        """CREATE TABLE usage_log_v2 (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            at REAL NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('generated', 'failed', 'cache_hit')),
            model TEXT NOT NULL,
            characters INTEGER NOT NULL,
            tokens INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            file_id TEXT
        )""",
        """INSERT INTO usage_log_v2 (id, user_id, at, kind, model, characters, tokens)
            SELECT id, user_id, at, kind, model, characters, tokens FROM usage_log""",
        "DROP TABLE usage_log",
        "ALTER TABLE usage_log_v2 RENAME TO usage_log",
        "CREATE INDEX usage_log_user_at ON usage_log(user_id, at)",
        "CREATE INDEX usage_log_at ON usage_log(at)",
        "CREATE INDEX usage_log_file ON usage_log(file_id) WHERE file_id IS NOT NULL",
        """CREATE TABLE usage_daily (
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            day INTEGER NOT NULL,
            model TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('generated', 'failed', 'cache_hit')),
            events INTEGER NOT NULL,
            characters INTEGER NOT NULL,
            tokens INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            tokened_characters INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, day, model, kind)
        ) WITHOUT ROWID""",
        "CREATE INDEX usage_daily_day ON usage_daily(day)",
        "ALTER TABLE audio_files ADD COLUMN reserved_bytes INTEGER",
        "ALTER TABLE audio_files ADD COLUMN input_tokens INTEGER",
        "ALTER TABLE audio_files ADD COLUMN output_tokens INTEGER",
    ]
    for statement in statements:
        db.execute(statement)


def _m7_playback(db: sqlite3.Connection) -> None:
    """Playback: each file's length and its user's resume position, and the timeline its audio was cut into.

    The position lives on the file's row, so storing it is an UPDATE that takes the next change sequence
    (migration 2's trigger): a second device's library sync sees where to resume like any other change.
    The timeline (read-along pieces, HLS segments, chapters) is written once, just before the row says
    "ready", and goes with the row (ON DELETE CASCADE).
    """
    statements = [
        "ALTER TABLE audio_files ADD COLUMN duration_s REAL",
        "ALTER TABLE audio_files ADD COLUMN position_s REAL",
        "ALTER TABLE audio_files ADD COLUMN position_device TEXT",
        "ALTER TABLE audio_files ADD COLUMN position_at REAL",
        """CREATE TABLE timelines (
            file_id TEXT PRIMARY KEY REFERENCES audio_files(id) ON DELETE CASCADE,
            run TEXT NOT NULL,
            sample_rate INTEGER NOT NULL,
            served_live INTEGER NOT NULL CHECK (served_live IN (0, 1))
        )""",
        """CREATE TABLE timeline_pieces (
            file_id TEXT NOT NULL REFERENCES timelines(file_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            text_start INTEGER NOT NULL,
            text_end INTEGER NOT NULL,
            samples INTEGER NOT NULL,
            PRIMARY KEY (file_id, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE hls_segments (
            file_id TEXT NOT NULL REFERENCES timelines(file_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            byte_start INTEGER NOT NULL,
            byte_end INTEGER NOT NULL,
            samples INTEGER NOT NULL,
            PRIMARY KEY (file_id, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE chapters (
            file_id TEXT NOT NULL REFERENCES timelines(file_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            title TEXT NOT NULL,
            text_start INTEGER NOT NULL,
            sample INTEGER NOT NULL,
            PRIMARY KEY (file_id, idx)
        ) WITHOUT ROWID""",
    ]
    for statement in statements:
        db.execute(statement)


# Append only: a migration that has shipped is never edited, and its position is its version.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m1_initial,
    _m2_change_log,
    _m3_accounting,
    _m4_failure_codes,
    _m5_content_hash_v2,
    _m6_accounting_v2,
    _m7_playback,
]
SCHEMA_VERSION = len(MIGRATIONS)
