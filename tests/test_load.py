"""The short CI form of bench/load.py: a few seconds of mixed load on the real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import report, run_load

pytestmark = pytest.mark.process


async def test_short_mixed_load_has_no_errors_and_no_corruption(tmp_path: Path) -> None:
    """20 clients, 300 requests across 20 users: no 5xx, no connection error, every byte correct (ranges, /v1
    cache hits, live streams), no library page showing another user's file."""
    results, elapsed, ready = await run_load(
        tmp_path / "data", clients=20, requests=300, duration=30, users=20, seed=7, log_path=tmp_path / "server.log"
    )
    print(report(results, elapsed))
    assert results.requests >= 300
    assert not results.server_errors, results.server_errors[:5]
    assert not results.connection_errors, results.connection_errors[:5]
    assert not results.corrupt, results.corrupt[:5]
    assert not results.foreign, results.foreign[:5]
    ran = {op for op, status in results.statuses if status == 200}
    assert {"v1_cache_hit", "library_page", "live_stream"} <= ran, results.statuses
    assert results.live_streams > 0
    assert results.bytes_checked > 0 and ready > 0
