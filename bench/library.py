"""Library sync and /v1 cache-hit benchmark: how long a new device takes to sync a large library, what a
returning device pays, and the cost of an OpenAI-style request served from the cache.

Run from the repository root:  python -m bench.library      (--help for the knobs)

speccyd runs in this process on 127.0.0.1 with production settings (no mDNS, no rate limit); the library is
seeded straight into its store. Every loop is bounded in count. Exit status 0 when every goal passes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.servers import HOST, bench_settings
from speccyd.app import create_app
from speccyd.appkeys import BLOBS, DATABASE, SESSIONS
from speccyd.generation.speech import content_hash
from speccyd.storage.database import Database
from speccyd.storage.records import NewFile
from speccyd.web.protocol import SpeccyRunner

FULL_SYNC_GOAL = 5.0  # seconds for a new device to sync 10,000 files in pages of 1000
INCREMENTAL_GOAL = 0.05  # seconds (median) for a returning device to fetch a handful of changes
AUDIO = b"\xff\xf3" * 16_000  # 32 KB of "audio" for the cache-hit file


async def seed(db: Database, user_id: str, count: int) -> str:
    """`count` ready files for the user; returns the id of the first (its audio is written by the caller)."""
    now = time.time()
    first = ""
    for i in range(count):
        text = f"text {i}"
        new = NewFile(content_hash("tts-1", "alloy", "mp3", 1.0, None, text), "tts-1", "alloy", "mp3", 1.0, None, text)
        claim = await db.claim(user_id, new, now, 7e5)
        await db.mark_ready(claim.row.id, len(AUDIO), "0" * 64, now, 7e5)
        first = first or claim.row.id
    return first


async def sync(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], limit: int, cursor: str = "0"
) -> tuple[int, str]:
    """Follow cursors from `cursor` until has_more is false; the number of files received and the last cursor."""
    files, more = 0, True
    while more:
        async with session.get(f"{base}/files", params={"since": cursor, "limit": limit}, headers=headers) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
        files += len(body["files"])
        cursor, more = body["next_cursor"], body["has_more"]
    return files, cursor


async def run(count: int, limit: int, requests: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(bench_settings(Path(tmp) / "data", "http://127.0.0.1:9/v1"))  # upstream never called
        runner = SpeccyRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://{HOST}:{port}"
        try:
            db = app[DATABASE]
            user_id = await db.upsert_user("bench-user", lambda _: b"unused", time.time())
            started = time.perf_counter()
            file_id = await seed(db, user_id, count)
            print(f"seeded {count} ready files in {time.perf_counter() - started:.1f}s")
            writer = app[BLOBS].writer(file_id, "mp3")
            writer.write(AUDIO)
            await writer.commit()
            token, _ = app[SESSIONS].issue(user_id, 3600)
            headers = {"Authorization": f"Bearer {token}"}

            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                files, cursor = await sync(session, base, headers, limit)
                full = time.perf_counter() - started
                assert files == count, files
                print(f"new device: {files} files in {-(-count // limit)} pages of {limit}: {full:.2f}s")

                incremental: list[float] = []
                for i in range(50):  # bounded: 50 rounds of 5 changes then one sync
                    for j in range(5):
                        new = NewFile(f"{count + i * 5 + j:064x}", "tts-1", "nova", "mp3", 1.0, None, "new")
                        await db.claim(user_id, new, time.time(), 7e5)
                    started = time.perf_counter()
                    changed, cursor = await sync(session, base, headers, limit, cursor)
                    incremental.append(time.perf_counter() - started)
                    assert changed == 5, changed
                median_inc = statistics.median(incremental)
                print(f"returning device, 5 changes: median {median_inc * 1000:.1f} ms over 50 syncs")

                body = {"model": "tts-1", "voice": "alloy", "input": "text 0"}
                latencies: list[float] = []
                for _ in range(requests):  # bounded count
                    started = time.perf_counter()
                    async with session.post(f"{base}/v1/audio/speech", json=body, headers=headers) as r:
                        assert r.status == 200 and await r.read() == AUDIO
                    latencies.append(time.perf_counter() - started)
                latencies.sort()
                p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
                print(
                    f"/v1/audio/speech cache hit (32 KB): p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                    f"{len(latencies) / sum(latencies):.0f} req/s sequential"
                )
        finally:
            await runner.cleanup()

    ok = True
    for name, value, goal in (("full sync", full, FULL_SYNC_GOAL), ("incremental", median_inc, INCREMENTAL_GOAL)):
        passed = value <= goal
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: {value:.3f}s (goal <= {goal}s)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="library size (default 10000)")
    parser.add_argument("--limit", type=int, default=1000, help="page size (default 1000)")
    parser.add_argument("--requests", type=int, default=500, help="/v1 cache-hit requests (default 500)")
    args = parser.parse_args()
    raise SystemExit(0 if asyncio.run(run(args.files, args.limit, args.requests)) else 1)


if __name__ == "__main__":
    main()
