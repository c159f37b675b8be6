"""Token buckets: steady rate, one minute's burst, bounded memory, and a reload that changes the rate."""

from __future__ import annotations

from speccyd.security.ratelimit import MAX_BUCKETS, RateLimiter
from tests.clock import FakeClock


def test_a_burst_of_one_minute_then_the_steady_rate() -> None:
    """60/min allows 60 at once; the 61st waits one second, and one token comes back per second."""
    clock = FakeClock()
    limiter = RateLimiter(60, clock)
    assert [limiter.take("alice") for _ in range(60)] == [0] * 60
    assert limiter.take("alice") == 1
    assert limiter.retry_after("alice") == 1
    assert limiter.take("bob") == 0  # buckets are per key
    clock.advance(1.0)
    assert limiter.take("alice") == 0
    assert limiter.take("alice") == 1


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    """At 1/min an empty bucket says 60 s, and after 59.5 s still 1 s (never 0 while refused)."""
    clock = FakeClock()
    limiter = RateLimiter(1, clock)
    assert limiter.take("k") == 0
    assert limiter.take("k") == 60
    clock.advance(59.5)
    assert limiter.retry_after("k") == 1
    clock.advance(0.5)
    assert limiter.retry_after("k") == 0


def test_full_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    """Past MAX_BUCKETS keys, buckets that have refilled are dropped; one still short of tokens is kept."""
    clock = FakeClock()
    limiter = RateLimiter(60, clock)
    for _ in range(60):
        limiter.take("busy")  # spent to empty
    for n in range(MAX_BUCKETS - 1):
        limiter.take(f"sprayed-{n}")
    assert len(limiter) == MAX_BUCKETS
    clock.advance(30.0)  # the sprayed buckets are full again; "busy" has 30 of 60
    limiter.take("one-more")  # one key past the bound: the sweep runs
    assert len(limiter) == 2  # "busy" and "one-more"
    assert [limiter.take("busy") for _ in range(31)][-2:] == [0, 1]  # its 30 tokens survived the sweep


def test_reconfigure_to_a_new_rate_starts_every_bucket_full() -> None:
    """A SIGHUP with a new rate clears the buckets; the same rate keeps them (nobody gets a free burst)."""
    clock = FakeClock()
    limiter = RateLimiter(1, clock)
    assert limiter.take("k") == 0 and limiter.take("k") == 60
    limiter.reconfigure(1)
    assert limiter.take("k") == 60
    limiter.reconfigure(2)
    assert limiter.per_minute == 2 and len(limiter) == 0
    assert limiter.take("k") == 0 and limiter.take("k") == 0 and limiter.take("k") == 30


def test_off_never_refuses_and_keeps_nothing() -> None:
    """rate_limit = off: every request goes ahead and no bucket is kept."""
    limiter = RateLimiter(0, FakeClock())
    assert all(limiter.take("k") == 0 for _ in range(1000))
    assert limiter.retry_after("k") == 0 and len(limiter) == 0
