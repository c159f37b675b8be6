"""Ended sessions: which session tokens no longer count, kept in memory and refreshed from the database.

`speccyd users revoke` runs in another process and writes `users.sessions_valid_after`. Checking the
database on every request would put a query in front of every handler, so the server keeps the (small)
table of revoked users in memory and re-reads it every REFRESH seconds: a revoke takes effect in the
running server within REFRESH seconds plus one query, which is what "promptly" means here (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging

from speccyd.storage.database import Database

log = logging.getLogger(__name__)

REFRESH = 1.0  # seconds; the query reads only users with a revocation, so once a second costs nothing


class Revocations:
    def __init__(self) -> None:
        self._after: dict[str, float] = {}

    def load(self, after: dict[str, float]) -> None:
        self._after = after

    def is_revoked(self, user_id: str, issued_at: float) -> bool:
        """A token issued at or before the user's (or everyone's) revocation time is void."""
        limit = max(self._after.get(user_id, 0.0), self._after.get("*", 0.0))
        return issued_at <= limit


async def refresh_loop(db: Database, revocations: Revocations, interval: float = REFRESH) -> None:
    while True:
        try:
            revocations.load(await db.revocations())
        except Exception:
            log.exception("cannot read session revocations; keeping the last known list")
        await asyncio.sleep(interval)
