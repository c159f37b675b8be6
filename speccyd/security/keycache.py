"""OpenAI keys the upstream accepted recently, so /v1 clients that send a key per request are not
checked with the upstream every time."""

from __future__ import annotations

from collections import OrderedDict

from speccyd.config.clock import SYSTEM_CLOCK, Clock

MAX_ENTRIES = 10_000  # far more keys than a household server sees; bounds memory against key spraying


class KeyCache:
    """Key lookup hash -> user id, for `ttl` seconds. Keyed by the HMAC, so no key is ever held here."""

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, lookup_hash: str) -> str | None:
        entry = self._entries.get(lookup_hash)
        if entry is None:
            return None
        user_id, expires = entry
        if expires <= self._clock.monotonic():
            del self._entries[lookup_hash]
            return None
        self._entries.move_to_end(lookup_hash)
        return user_id

    def put(self, lookup_hash: str, user_id: str) -> None:
        self._entries[lookup_hash] = (user_id, self._clock.monotonic() + self._ttl)
        self._entries.move_to_end(lookup_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
