"""A clock the test moves by hand: expiry, rate limits and hit bookkeeping without real sleeps."""

from __future__ import annotations


class FakeClock:
    """Wall and monotonic time that only move when `advance` is called (speccyd.config.clock.Clock)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self._now = now
        self._monotonic = 1_000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._monotonic += seconds
