"""Usage figures: per-user storage and today's activity, usage lines in a window, server-wide totals, and the
daily roll-up that keeps them cheap.

Usage is logged one row per event (`usage_log`) and summed into whole UTC days (`usage_daily`) by the cleanup
once a day is over and the next has begun: raw rows stay only for today and yesterday, which is what the
daily quota and windows of up to a day read exactly. A longer window counts the days it touches in full.
Reports run on the report reader (engine.py): a report never delays a write, nor a request's lookup.
"""

from __future__ import annotations

import sqlite3

from speccyd.storage.records import UsageLine, UserUsage
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.files import start_of_day

DAY = 86400


class UsageQueries(Engine):
    async def usage_report(self, now: float, user_id: str | None = None) -> list[UserUsage]:
        today = start_of_day(now)

        def report(db: sqlite3.Connection) -> list[UserUsage]:
            # characters_today: everything sent upstream today (what the daily quota counts), failures included.
            rows = db.execute(
                """
                SELECT u.id, u.created_at, u.last_seen,
                    (SELECT count(*) FROM audio_files f WHERE f.user_id = u.id AND f.status = 'ready'),
                    (SELECT coalesce(sum(size_bytes), 0) FROM audio_files f
                        WHERE f.user_id = u.id AND f.status = 'ready'),
                    (SELECT count(*) FROM usage_log l WHERE l.user_id = u.id AND l.kind = 'generated' AND l.at >= ?),
                    (SELECT coalesce(sum(characters), 0) FROM usage_log l
                        WHERE l.user_id = u.id AND l.kind IN ('generated', 'failed') AND l.at >= ?)
                FROM users u WHERE ? IS NULL OR u.id = ? ORDER BY u.created_at
                """,
                (today, today, user_id, user_id),
            )
            return [UserUsage(*r) for r in rows]

        return await self.report(report)

    async def user_usage(self, user_id: str, now: float) -> UserUsage | None:
        return next(iter(await self.usage_report(now, user_id)), None)

    async def usage_lines(self, since: float, user_id: str | None = None) -> list[UsageLine]:
        """Usage since `since`, summed per user, model and kind: raw events since then, and every rolled-up
        day that the window touches."""
        # One user's lines read through (user_id, at) and the daily key; a server-wide report through the
        # time indexes. ("? IS NULL OR user_id = ?" would keep SQLite from using either.)
        mine = "AND user_id = ?" if user_id is not None else ""
        args = (since, user_id, since, user_id) if user_id is not None else (since, since)
        query = f"""
            SELECT user_id, model, kind, sum(events), sum(characters), sum(tokens), sum(input_tokens),
                sum(output_tokens), sum(tokened_characters)
            FROM (
                SELECT user_id, model, kind, 1 AS events, characters, tokens, input_tokens, output_tokens,
                    CASE WHEN input_tokens IS NULL THEN 0 ELSE characters END AS tokened_characters
                FROM usage_log WHERE at >= ? {mine}
                UNION ALL
                SELECT user_id, model, kind, events, characters, tokens, input_tokens, output_tokens,
                    tokened_characters
                FROM usage_daily WHERE day > ? - {DAY} {mine}
            )
            GROUP BY user_id, model, kind ORDER BY user_id, model, kind
        """
        return await self.report(lambda db: [UsageLine(*r) for r in db.execute(query, args)])

    async def roll_up_usage(self, before: float, limit: int) -> int:
        """Move at most `limit` raw usage rows from before `before` into their days; how many moved.

        Rows of a generation still in flight stay raw: their tokens and their fate are still to be written.
        Small batches keep the write lock short; the cleanup calls again until fewer than `limit` move.
        """

        def roll(db: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM usage_log WHERE at < ? AND (file_id IS NULL OR file_id NOT IN "
                    "(SELECT id FROM audio_files WHERE status = 'generating')) ORDER BY at LIMIT ?",
                    (before, limit),
                )
            ]
            if not ids:
                return 0
            db.execute("CREATE TEMP TABLE IF NOT EXISTS rolling (id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM rolling")
            db.executemany("INSERT INTO rolling (id) VALUES (?)", [(i,) for i in ids])
            db.execute(
                f"""
                INSERT INTO usage_daily (user_id, day, model, kind, events, characters, tokens, input_tokens,
                    output_tokens, tokened_characters)
                SELECT user_id, CAST(at / {DAY} AS INTEGER) * {DAY}, model, kind, count(*), sum(characters),
                    sum(tokens), sum(input_tokens), sum(output_tokens),
                    sum(CASE WHEN input_tokens IS NULL THEN 0 ELSE characters END)
                FROM usage_log WHERE id IN (SELECT id FROM rolling)
                GROUP BY user_id, CAST(at / {DAY} AS INTEGER), model, kind
                ON CONFLICT (user_id, day, model, kind) DO UPDATE SET
                    events = events + excluded.events,
                    characters = characters + excluded.characters,
                    tokens = {_add("tokens")},
                    input_tokens = {_add("input_tokens")},
                    output_tokens = {_add("output_tokens")},
                    tokened_characters = tokened_characters + excluded.tokened_characters
                """
            )
            db.execute("DELETE FROM usage_log WHERE id IN (SELECT id FROM rolling)")
            db.execute("DELETE FROM rolling")
            return len(ids)

        return await self.write(roll)

    async def storage_totals(self) -> tuple[int, int]:
        """(ready files, their bytes) for the whole server."""
        files, size = await self.report(
            lambda db: db.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0) FROM audio_files WHERE status = 'ready'"
            ).fetchone()
        )
        return int(files), int(size)


def _add(column: str) -> str:
    """Sum two nullable counts: NULL only when neither side knows."""
    return (
        f"CASE WHEN excluded.{column} IS NULL THEN {column} WHEN {column} IS NULL THEN excluded.{column} "
        f"ELSE {column} + excluded.{column} END"
    )
