"""Usage figures: per-user storage and today's activity, usage lines in a window, server-wide totals.

Reports run on reader connections: a report over a long usage log never delays a write.
"""

from __future__ import annotations

import sqlite3

from speccyd.storage.records import UsageLine, UserUsage
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.files import start_of_day


class UsageQueries(Engine):
    async def usage_report(self, now: float, user_id: str | None = None) -> list[UserUsage]:
        today = start_of_day(now)

        def report(db: sqlite3.Connection) -> list[UserUsage]:
            rows = db.execute(
                """
                SELECT u.id, u.created_at, u.last_seen,
                    (SELECT count(*) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                    (SELECT coalesce(sum(size_bytes), 0) FROM audio_files f
                        WHERE f.user_id = u.id AND f.status = 'ready'),
                    (SELECT count(*) FROM usage_log l WHERE l.user_id = u.id AND l.kind = 'generated' AND l.at >= ?),
                    (SELECT coalesce(sum(characters), 0) FROM usage_log l
                        WHERE l.user_id = u.id AND l.kind = 'generated' AND l.at >= ?)
                FROM users u WHERE ? IS NULL OR u.id = ? ORDER BY u.created_at
                """,
                (today, today, user_id, user_id),
            )
            return [UserUsage(*r) for r in rows]

        return await self.read(report)

    async def user_usage(self, user_id: str, now: float) -> UserUsage | None:
        return next(iter(await self.usage_report(now, user_id)), None)

    async def usage_lines(self, since: float, user_id: str | None = None) -> list[UsageLine]:
        """Usage events since `since`, summed per user, model and kind."""
        return await self.read(
            lambda db: [
                UsageLine(*r)
                for r in db.execute(
                    "SELECT user_id, model, kind, count(*), coalesce(sum(characters), 0), sum(tokens) FROM usage_log "
                    "WHERE at >= ? AND (? IS NULL OR user_id = ?) "
                    "GROUP BY user_id, model, kind ORDER BY user_id, model, kind",
                    (since, user_id, user_id),
                )
            ]
        )

    async def storage_totals(self) -> tuple[int, int]:
        """(ready files, their bytes) for the whole server."""
        files, size = await self.read(
            lambda db: db.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0) FROM audio_files WHERE status = 'ready'"
            ).fetchone()
        )
        return int(files), int(size)
