"""Users, their limits and revocations, and the server's own key-value facts (`meta`)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable

from speccyd.storage.errors import StoreError
from speccyd.storage.records import LimitOverrides, UserInfo
from speccyd.storage.sqlite.engine import Engine

SESSIONS_VALID_AFTER = "sessions_valid_after"
_LIMIT_COLUMNS = {
    "daily_chars": "limit_daily_chars",
    "storage_bytes": "limit_storage_bytes",
    "max_files": "limit_max_files",
}


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


class UserQueries(Engine):
    # --- meta ---

    async def get_meta(self, key: str) -> str | None:
        return await self.read(lambda db: get_meta(db, key))

    async def set_meta(self, key: str, value: str) -> None:
        await self.write(lambda db: set_meta(db, key, value))

    async def server_id(self) -> str:
        """The UUID created with the database: this server's identity on the network (mDNS `id`)."""
        value = await self.get_meta("server_id")
        if value is None:
            raise StoreError(f"database {self.path} has no server_id")
        return value

    async def probe_write(self, now: float) -> None:
        """A real write and commit: fails when the disk is full or read-only, or the file is gone."""
        await self.set_meta("health_probe", repr(now))

    # --- users ---

    async def upsert_user(self, key_hash: str, encrypt: Callable[[str], bytes], now: float) -> str:
        """The user for this key hash, created on first sight; `encrypt(user_id)` gives the stored key."""

        def upsert(db: sqlite3.Connection) -> str:
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

        return await self.write(upsert)

    async def user_key(self, user_id: str) -> bytes | None:
        row = await self.read(lambda db: db.execute("SELECT key_enc FROM users WHERE id = ?", (user_id,)).fetchone())
        return None if row is None else bytes(row[0])

    async def user_keys(self) -> list[tuple[str, bytes]]:
        return await self.read(lambda db: [(r[0], bytes(r[1])) for r in db.execute("SELECT id, key_enc FROM users")])

    async def rewrap_user_keys(self, rows: list[tuple[str, str, bytes]], meta: tuple[str, str] | None = None) -> None:
        """Replace (user_id, key_hash, key_enc) for every user in one transaction (secret rotation), with a
        meta (key, value) written in the same transaction."""

        def rewrap(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE users SET key_hash = ?, key_enc = ? WHERE id = ?", [(h, e, u) for u, h, e in rows])
            if meta is not None:
                set_meta(db, *meta)

        await self.write(rewrap)

    async def find_users(self, prefix: str) -> list[str]:
        return await self.read(
            lambda db: [r[0] for r in db.execute("SELECT id FROM users WHERE id LIKE ? || '%'", (prefix.lower(),))]
        )

    async def user_infos(self, user_id: str | None = None) -> list[UserInfo]:
        def infos(db: sqlite3.Connection) -> list[UserInfo]:
            rows = db.execute(
                """
                SELECT u.id, u.created_at, u.last_seen,
                    (SELECT count(*) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                    (SELECT coalesce(sum(size_bytes), 0) FROM audio_files f
                        WHERE f.user_id = u.id AND f.status = 'ready'),
                    u.sessions_valid_after, u.limit_daily_chars, u.limit_storage_bytes, u.limit_max_files
                FROM users u WHERE ? IS NULL OR u.id = ? ORDER BY u.created_at
                """,
                (user_id, user_id),
            )
            return [UserInfo(r[0], r[1], r[2], r[3], r[4], r[5], LimitOverrides(r[6], r[7], r[8])) for r in rows]

        return await self.report(infos)

    async def user_overrides(self, user_id: str) -> LimitOverrides:
        row = await self.read(
            lambda db: db.execute(
                "SELECT limit_daily_chars, limit_storage_bytes, limit_max_files FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        )
        return LimitOverrides() if row is None else LimitOverrides(*row)

    async def set_limits(self, user_id: str, changes: dict[str, int | None]) -> None:
        """Set some of daily_chars, storage_bytes, max_files; None puts one back to the server default."""
        if not changes:
            return
        assignments = ", ".join(f"{_LIMIT_COLUMNS[name]} = ?" for name in changes)  # names from the fixed table
        await self.write(
            lambda db: db.execute(f"UPDATE users SET {assignments} WHERE id = ?", [*changes.values(), user_id])
        )

    async def revoke_sessions(self, user_id: str, now: float) -> None:
        await self.write(
            lambda db: db.execute("UPDATE users SET sessions_valid_after = ? WHERE id = ?", (now, user_id))
        )

    async def revoke_all_sessions(self, now: float) -> None:
        """Every session issued so far is void (the database was reset, or the secrets rotated)."""
        await self.set_meta(SESSIONS_VALID_AFTER, repr(now))

    async def revocations(self) -> dict[str, float]:
        """user id -> time before which that user's sessions are void; "*" holds the server-wide time."""

        def read(db: sqlite3.Connection) -> dict[str, float]:
            result = {
                r[0]: float(r[1])
                for r in db.execute("SELECT id, sessions_valid_after FROM users WHERE sessions_valid_after > 0")
            }
            everyone = get_meta(db, SESSIONS_VALID_AFTER)
            if everyone:
                result["*"] = float(everyone)
            return result

        return await self.read(read)
