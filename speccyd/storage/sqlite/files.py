"""Audio file rows: claiming a generation (with its limits), finishing it, reading, deleting, purging."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from typing import Any

from speccyd.storage.errors import LimitReached, UnknownUser
from speccyd.storage.records import (
    NO_LIMITS,
    Claim,
    Failure,
    FileRow,
    Hit,
    LimitOverrides,
    Limits,
    NewFile,
    PurgeFilter,
    TokenUsage,
)
from speccyd.storage.sqlite.engine import Engine

FILE_COLUMNS = ", ".join(FileRow.__dataclass_fields__)
_PLACEHOLDERS = ", ".join("?" * len(FileRow.__dataclass_fields__))

# A failed row keeps this much of its text: enough for the library's preview (PREVIEW_CHARS in
# web/handlers/library.py), not 100,000 characters for the whole retention.
FAILED_TEXT_KEPT = 200
# An upstream's error message can be a whole HTML page; what is kept of it.
MAX_ERROR_CHARS = 1000
# Failed rows kept per user (newest first): an account without credit failing every request cannot grow the
# database without bound, whatever its limits.
MAX_FAILED_KEPT = 100


def _total(row: FileRow) -> int | None:
    if row.input_tokens is None or row.output_tokens is None:
        return None
    return row.input_tokens + row.output_tokens


def _tokens(hit: Hit) -> int | None:
    if hit.input_tokens is None or hit.output_tokens is None:
        return None
    return hit.input_tokens + hit.output_tokens


def file_row(row: sqlite3.Row | tuple[Any, ...] | None) -> FileRow | None:
    return None if row is None else FileRow(*row)


def start_of_day(now: float) -> float:
    """Midnight UTC: "today" in usage figures is the UTC day, documented as such."""
    return now - (now % 86400)


def _check_limits(db: sqlite3.Connection, user_id: str, new: NewFile, defaults: Limits, now: float) -> None:
    row = db.execute(
        "SELECT limit_daily_chars, limit_storage_bytes, limit_max_files FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    limits = LimitOverrides(*row).apply(defaults) if row is not None else defaults
    characters = len(new.text)
    if limits.daily_chars:
        # Everything sent upstream today: generations in flight, finished, failed or deleted since (each is
        # logged when it is claimed), so neither a burst nor deleting mid-generation slips past the limit.
        used = db.execute(
            "SELECT coalesce(sum(characters), 0) FROM usage_log "
            "WHERE user_id = ? AND kind IN ('generated', 'failed') AND at >= ?",
            (user_id, start_of_day(now)),
        ).fetchone()[0]
        if used + characters > limits.daily_chars:
            raise LimitReached("daily_chars", limits.daily_chars, used, None)
    if limits.storage_bytes or limits.max_files:
        # Kept files are the ready ones, the ones in flight (at their estimated size until they are stored)
        # and the failed ones (they hold a row until they expire or are deleted).
        files, stored, first_expiry = db.execute(
            "SELECT count(*), coalesce(sum(coalesce(size_bytes, reserved_bytes, 0)), 0), min(expires_at) "
            "FROM audio_files WHERE user_id = ? AND (status = 'generating' OR expires_at > ?)",
            (user_id, now),
        ).fetchone()
        needed = new.reserved_bytes or 0
        if limits.storage_bytes and stored + needed > limits.storage_bytes:
            raise LimitReached("storage", limits.storage_bytes, stored, first_expiry, needed)
        if limits.max_files and files >= limits.max_files:
            raise LimitReached("max_files", limits.max_files, files, first_expiry)


def _check_room(db: sqlite3.Connection, user_id: str, size: int, defaults: Limits, now: float) -> None:
    """Storage and file limits for a file of `size` bytes that exists already (an import): it must fit whole."""
    row = db.execute(
        "SELECT limit_daily_chars, limit_storage_bytes, limit_max_files FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    limits = LimitOverrides(*row).apply(defaults) if row is not None else defaults
    if not (limits.storage_bytes or limits.max_files):
        return
    files, stored, first_expiry = db.execute(
        "SELECT count(*), coalesce(sum(size_bytes), 0), min(expires_at) FROM audio_files "
        "WHERE user_id = ? AND (status = 'generating' OR (status = 'ready' AND expires_at > ?))",
        (user_id, now),
    ).fetchone()
    if limits.storage_bytes and stored + size > limits.storage_bytes:
        raise LimitReached("storage", limits.storage_bytes, stored, first_expiry)
    if limits.max_files and files + 1 > limits.max_files:
        raise LimitReached("max_files", limits.max_files, files, first_expiry)


def _purge_where(f: PurgeFilter, now: float) -> tuple[str, list[Any]]:
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


def _settle_tombstones(db: sqlite3.Connection, since_seq: int, removed: list[FileRow], now: float) -> None:
    """Give the tombstones this transaction's deletes just wrote the caller's time and reason.

    The trigger (migration 2) can only use the database's own clock; the caller knows the time it acts at
    (the server's clock, which tests move), so "expired" means expired at that time, as the claim decides.
    """
    if not removed:
        return
    expired = [row.id for row in removed if row.is_expired(now)]
    db.execute("UPDATE tombstones SET at = ?, reason = 'deleted' WHERE seq > ?", (now, since_seq))
    if expired:
        marks = ", ".join("?" * len(expired))
        db.execute(
            f"UPDATE tombstones SET reason = 'expired' WHERE seq > ? AND file_id IN ({marks})", [since_seq, *expired]
        )


def _clock_seq(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT seq FROM change_clock").fetchone()[0])


class FileQueries(Engine):
    async def claim(
        self, user_id: str, new: NewFile, now: float, retention: float, limits: Limits = NO_LIMITS
    ) -> Claim:
        """Find usable audio for this content or register a new generation, atomically.

        Ready and unexpired: its expiry moves to now + retention (a cache hit). Generating: returned as is,
        so concurrent identical requests share one upstream call. Otherwise a new row replaces the old one,
        if the user's `limits` allow it (LimitReached otherwise): checked in the same transaction, so
        concurrent requests cannot all slip under a limit together.
        """

        def claim(db: sqlite3.Connection) -> Claim:
            if db.execute("UPDATE users SET last_seen = ? WHERE id = ?", (now, user_id)).rowcount == 0:
                raise UnknownUser(user_id)
            old = file_row(
                db.execute(
                    f"SELECT {FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND content_hash = ?",
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
                    "INSERT INTO usage_log (user_id, at, kind, model, characters, input_tokens, output_tokens, "
                    "tokens) VALUES (?, ?, 'cache_hit', ?, ?, ?, ?, ?)",
                    (user_id, now, old.model, old.characters, old.input_tokens, old.output_tokens, _total(old)),
                )
                hit = FileRow(**{**old.__dict__, "expires_at": now + retention, "updated_at": now})
                return Claim(hit, created=False, replaced=None)
            _check_limits(db, user_id, new, limits, now)
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
                f"INSERT INTO audio_files ({FILE_COLUMNS}) VALUES ({_PLACEHOLDERS})", tuple(row.__dict__.values())
            )
            # Counted from now: the text goes upstream whether the audio ends up stored, fails or is deleted.
            db.execute(
                "INSERT INTO usage_log (user_id, at, kind, model, characters, file_id) "
                "VALUES (?, ?, 'generated', ?, ?, ?)",
                (user_id, now, row.model, row.characters, row.id),
            )
            return Claim(row, created=True, replaced=old)

        return await self.write(claim)

    async def import_file(
        self,
        user_id: str,
        new: NewFile,
        file_id: str,
        size: int,
        sha256: str,
        now: float,
        retention: float,
        limits: Limits = NO_LIMITS,
    ) -> Claim:
        """Register audio that is already stored under `file_id` as a ready file of this user, atomically.

        The same rules as `claim`: ready and unexpired audio for this content is kept (its expiry moves to
        now + retention) and returned with created=False, as is a generation in flight; the caller then
        removes the audio it stored. Otherwise the file must fit the user's storage and file limits whole
        (LimitReached), and a new ready row replaces a failed or expired one (`replaced`). No usage is
        recorded: an import is neither a generation nor a cache hit.
        """

        def store(db: sqlite3.Connection) -> Claim:
            if db.execute("UPDATE users SET last_seen = ? WHERE id = ?", (now, user_id)).rowcount == 0:
                raise UnknownUser(user_id)
            old = file_row(
                db.execute(
                    f"SELECT {FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND content_hash = ?",
                    (user_id, new.content_hash),
                ).fetchone()
            )
            if old is not None and old.status == "generating":
                return Claim(old, created=False, replaced=None)
            if old is not None and old.status == "ready" and not old.is_expired(now):
                expires = max(old.expires_at, now + retention)
                db.execute("UPDATE audio_files SET expires_at = ?, updated_at = ? WHERE id = ?", (expires, now, old.id))
                return Claim(FileRow(**{**old.__dict__, "expires_at": expires, "updated_at": now}), False, None)
            _check_room(db, user_id, size, limits, now)
            if old is not None:
                db.execute("DELETE FROM audio_files WHERE id = ?", (old.id,))
            row = FileRow(
                id=file_id,
                user_id=user_id,
                status="ready",
                characters=len(new.text),
                size_bytes=size,
                sha256=sha256,
                error=None,
                created_at=now,
                updated_at=now,
                expires_at=now + retention,
                **new.__dict__,
            )
            db.execute(
                f"INSERT INTO audio_files ({FILE_COLUMNS}) VALUES ({_PLACEHOLDERS})", tuple(row.__dict__.values())
            )
            return Claim(row, created=True, replaced=old)

        return await self.write(store)

    async def record_hits(self, hits: Iterable[Hit]) -> None:
        """Write cache hits answered from memory: expiry bumps, last-seen times and usage records."""
        hits = list(hits)
        # Only the latest bump per file and per user matters; a busy second collapses to a few updates.
        latest_file = {h.file_id: h for h in sorted(hits, key=lambda h: h.at)}
        latest_user = {h.user_id: h.at for h in latest_file.values()}

        def record(db: sqlite3.Connection) -> None:
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
                "INSERT INTO usage_log (user_id, at, kind, model, characters, input_tokens, output_tokens, tokens) "
                "VALUES (?, ?, 'cache_hit', ?, ?, ?, ?, ?)",
                [(h.user_id, h.at, h.model, h.characters, h.input_tokens, h.output_tokens, _tokens(h)) for h in hits],
            )

        await self.write(record)

    async def mark_ready(
        self, file_id: str, size: int, sha256: str, now: float, retention: float, usage: TokenUsage | None = None
    ) -> bool:
        """False when the row is gone (deleted or purged meanwhile): the caller then removes the audio."""
        tokens = (None, None, None) if usage is None else (usage.input_tokens, usage.output_tokens, usage.total)

        def mark(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "UPDATE audio_files SET status = 'ready', size_bytes = ?, sha256 = ?, error = NULL, "
                "error_code = NULL, upstream_status = NULL, reserved_bytes = NULL, input_tokens = ?, "
                "output_tokens = ?, updated_at = ?, expires_at = ? WHERE id = ? AND status = 'generating' "
                "RETURNING id",
                (size, sha256, tokens[0], tokens[1], now, now + retention, file_id),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE usage_log SET input_tokens = ?, output_tokens = ?, tokens = ? WHERE file_id = ?",
                (*tokens, file_id),
            )
            return True

        return await self.write(mark)

    async def mark_failed(self, file_id: str, failure: Failure, now: float) -> None:
        """The generation failed: keep why (bounded), and only a preview of the text, which the row no longer
        needs (asking again sends the whole text). Its characters stay counted (usage kind 'failed'), and a
        user keeps at most MAX_FAILED_KEPT failed rows: the oldest go first."""

        def mark(db: sqlite3.Connection) -> None:
            row = db.execute(
                "UPDATE audio_files SET status = 'failed', text = substr(text, 1, ?), error = ?, error_code = ?, "
                "upstream_status = ?, reserved_bytes = NULL, updated_at = ? WHERE id = ? AND status = 'generating' "
                "RETURNING user_id",
                (
                    FAILED_TEXT_KEPT,
                    failure.message[:MAX_ERROR_CHARS],
                    failure.code,
                    failure.upstream_status,
                    now,
                    file_id,
                ),
            ).fetchone()
            if row is None:
                return
            db.execute("UPDATE usage_log SET kind = 'failed' WHERE file_id = ? AND kind = 'generated'", (file_id,))
            db.execute(
                "DELETE FROM audio_files WHERE id IN (SELECT id FROM audio_files WHERE user_id = ? "
                "AND status = 'failed' ORDER BY updated_at DESC LIMIT -1 OFFSET ?)",
                (row[0], MAX_FAILED_KEPT),
            )

        await self.write(mark)

    async def get_file(self, file_id: str) -> FileRow | None:
        return await self.read(
            lambda db: file_row(
                db.execute(f"SELECT {FILE_COLUMNS} FROM audio_files WHERE id = ?", (file_id,)).fetchone()
            )
        )

    async def get_by_hash(self, user_id: str, content_hash: str) -> FileRow | None:
        return await self.read(
            lambda db: file_row(
                db.execute(
                    f"SELECT {FILE_COLUMNS} FROM audio_files WHERE user_id = ? AND content_hash = ?",
                    (user_id, content_hash),
                ).fetchone()
            )
        )

    async def delete_file(self, user_id: str, file_id: str, now: float) -> FileRow | None:
        def delete(db: sqlite3.Connection) -> FileRow | None:
            before = _clock_seq(db)
            row = file_row(
                db.execute(
                    f"DELETE FROM audio_files WHERE id = ? AND user_id = ? RETURNING {FILE_COLUMNS}",
                    (file_id, user_id),
                ).fetchone()
            )
            _settle_tombstones(db, before, [row] if row is not None else [], now)
            return row

        return await self.write(delete)

    async def generating(self) -> list[FileRow]:
        return await self.read(
            lambda db: [
                FileRow(*r) for r in db.execute(f"SELECT {FILE_COLUMNS} FROM audio_files WHERE status = 'generating'")
            ]
        )

    async def ready_ids(self) -> set[str]:
        return await self.read(
            lambda db: {r[0] for r in db.execute("SELECT id FROM audio_files WHERE status = 'ready'")}
        )

    async def select_purge(self, f: PurgeFilter, now: float) -> list[FileRow]:
        where, args = _purge_where(f, now)
        return await self.read(
            lambda db: [FileRow(*r) for r in db.execute(f"SELECT {FILE_COLUMNS} FROM audio_files WHERE {where}", args)]
        )

    async def delete_purge(self, f: PurgeFilter, now: float, limit: int) -> list[FileRow]:
        """Delete at most `limit` matching rows; small batches keep the write lock short."""
        where, args = _purge_where(f, now)

        def delete(db: sqlite3.Connection) -> list[FileRow]:
            before = _clock_seq(db)
            rows = [
                FileRow(*r)
                for r in db.execute(
                    f"DELETE FROM audio_files WHERE id IN (SELECT id FROM audio_files WHERE {where} LIMIT ?) "
                    f"RETURNING {FILE_COLUMNS}",
                    [*args, limit],
                ).fetchall()
            ]
            _settle_tombstones(db, before, rows, now)
            return rows

        return await self.write(delete)
