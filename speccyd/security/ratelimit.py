"""Token buckets per key (user id, client address): steady rate, bursts up to one minute's worth."""

from __future__ import annotations

import math

from speccyd.config.clock import SYSTEM_CLOCK, Clock

# Clients (users or addresses) tracked before full buckets are swept: memory stays bounded under key spraying.
MAX_BUCKETS = 10_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def reconfigure(self, per_minute: int) -> None:
        """A new rate (SIGHUP); buckets restart full rather than carry tokens of another rate."""
        if per_minute != self.per_minute:
            self.per_minute = per_minute
            self._rate = per_minute / 60.0
            self._buckets.clear()

    def __len__(self) -> int:
        """Buckets held: bounded, because full buckets are forgotten (see `_forget_full`)."""
        return len(self._buckets)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, updated = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - updated) * self._rate)

    def retry_after(self, key: str) -> int:
        """0 when a request may go ahead now, else whole seconds until one may."""
        if not self.enabled:
            return 0
        tokens = self._tokens(key, self._clock.monotonic())
        return 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) / self._rate))

    def take(self, key: str) -> int:
        """Spend one token; returns 0 on success, else the Retry-After seconds (nothing spent)."""
        if not self.enabled:
            return 0
        now = self._clock.monotonic()
        tokens = self._tokens(key, now)
        if tokens < 1:
            return max(1, math.ceil((1 - tokens) / self._rate))
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)
        return 0

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket; dropping them bounds memory.
        full = [k for k in self._buckets if self._tokens(k, now) >= self.per_minute]
        for key in full:
            del self._buckets[key]
