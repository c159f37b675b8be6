"""Bounded load on loopback: many users signing in, hitting the cache, missing it, polling, downloading ranges
and deleting, against the real `speccyd serve` and the fake upstream.

    .venv/bin/python bench/load.py --clients 200 --requests 40000 --duration 60

Pass: zero 5xx, zero connection errors, every byte downloaded equal to what the upstream sent, and the data
dir's invariants intact afterwards. Prints p50/p99 per operation. tests/test_load.py runs a short form in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from tests.fake_upstream import FakeUpstream
from tests.invariants import check_data_dir
from tests.server_process import ServerProcess


@dataclass
class User:
    key: str
    token: str = ""
    files: dict[str, str] = field(default_factory=dict)  # file id -> text
    texts: list[str] = field(default_factory=list)  # texts asked for before: cache hits


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    connection_errors: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    requests: int = 0
    bytes_checked: int = 0


def expected_audio(text: str, size: int) -> bytes:
    """What the fake upstream sends for this text with speccyd's defaults."""
    body = {"input": text, "model": "tts-1", "voice": "alloy", "response_format": "mp3", "speed": 1.0}
    return FakeUpstream.audio_for(body, size)


class Load:
    def __init__(self, url: str, users: int, audio_size: int, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.users = [User(f"sk-test-load-{i:04d}") for i in range(users)]
        self.audio_size = audio_size
        self.results = Results()
        self.counter = 0
        self.reading: Counter[str] = Counter()  # file id -> downloads in flight
        self.deleting: set[str] = set()

    async def _call(
        self, http: aiohttp.ClientSession, op: str, method: str, path: str, **kwargs: Any
    ) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            async with http.request(method, self.url + path, **kwargs) as response:
                data = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self.results.connection_errors.append(f"{op} {path}: {type(e).__name__} {e}")
            return 0, b""
        self.results.latencies[op].append(time.perf_counter() - started)
        self.results.statuses[(op, response.status)] += 1
        self.results.requests += 1
        if response.status >= 500:
            self.results.server_errors.append(f"{op} {path}: {response.status} {data[:200]!r}")
        return response.status, data

    def _auth(self, user: User) -> dict[str, str]:
        return {"Authorization": f"Bearer {user.token}"}

    async def sign_in(self, http: aiohttp.ClientSession, user: User) -> None:
        status, data = await self._call(http, "sign_in", "POST", "/auth/verify", json={"openai_token": user.key})
        if status == 200:
            import json

            user.token = json.loads(data)["session_token"]

    async def generate(self, http: aiohttp.ClientSession, user: User, text: str, op: str) -> None:
        import json

        status, data = await self._call(
            http, op, "POST", "/tts/generate", json={"text": text}, headers=self._auth(user)
        )
        if status in (200, 202):
            body = json.loads(data)
            user.files[body["file_id"]] = text
            if text not in user.texts:
                user.texts.append(text)

    async def one(self, http: aiohttp.ClientSession) -> None:
        rng = self.rng
        user = rng.choice(self.users)
        if not user.token:
            await self.sign_in(http, user)
            return
        roll = rng.random()
        if roll < 0.05:
            await self.sign_in(http, user)
        elif roll < 0.35 and user.texts:
            await self.generate(http, user, rng.choice(user.texts), "cache_hit")
        elif roll < 0.45 or not user.files:
            self.counter += 1
            await self.generate(http, user, f"load text {self.counter} for {user.key}", "miss")
        elif roll < 0.65:
            text = rng.choice(list(user.files.values()))
            from speccyd.tts import content_hash

            digest = content_hash("tts-1", "alloy", "mp3", 1.0, None, text)
            await self._call(http, "status", "GET", f"/tts/{digest}/status", headers=self._auth(user))
        elif roll < 0.9:
            # A file is never downloaded while this load deletes it: deleting a file still generating cuts
            # its live readers on purpose (an abnormal end, not a short file), which is no server fault.
            choices = [(f, t) for f, t in user.files.items() if f not in self.deleting]
            if not choices:
                return
            file_id, text = rng.choice(choices)
            start = rng.randrange(self.audio_size)
            end = min(self.audio_size - 1, start + rng.randrange(1, 2000))
            headers = {**self._auth(user), "Range": f"bytes={start}-{end}"}
            self.reading[file_id] += 1
            try:
                status, data = await self._call(http, "range_download", "GET", f"/files/{file_id}", headers=headers)
            finally:
                self.reading[file_id] -= 1
            if status == 206:
                if data != expected_audio(text, self.audio_size)[start : end + 1]:
                    self.results.corrupt.append(f"{file_id} bytes {start}-{end}")
                self.results.bytes_checked += len(data)
        else:
            choices = [(f, t) for f, t in user.files.items() if not self.reading[f] and f not in self.deleting]
            if not choices:
                return
            file_id, text = rng.choice(choices)
            self.deleting.add(file_id)
            try:
                status, _ = await self._call(http, "delete", "DELETE", f"/tts/{file_id}", headers=self._auth(user))
            finally:
                self.deleting.discard(file_id)
            if status in (200, 404):
                user.files.pop(file_id, None)
                if text in user.texts:
                    user.texts.remove(text)

    async def run(self, clients: int, requests: int, duration: float) -> Results:
        deadline = time.monotonic() + duration
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def client() -> None:
                while self.results.requests + len(self.results.connection_errors) < requests:
                    if time.monotonic() > deadline:
                        return
                    await self.one(http)

            await asyncio.gather(*(client() for _ in range(clients)))
        return self.results


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(results: Results, elapsed: float) -> str:
    lines = [f"{results.requests} requests in {elapsed:.1f}s ({results.requests / elapsed:.0f}/s)"]
    everything: list[float] = []
    for op, values in sorted(results.latencies.items()):
        everything += values
        codes = {code: n for (o, code), n in sorted(results.statuses.items()) if o == op}
        lines.append(
            f"  {op:15s} n={len(values):6d}  p50={percentile(values, 50) * 1000:7.1f}ms  "
            f"p99={percentile(values, 99) * 1000:7.1f}ms  statuses={codes}"
        )
    lines.append(f"  {'all':15s} n={len(everything):6d}  p50={percentile(everything, 50) * 1000:7.1f}ms  "
                 f"p99={percentile(everything, 99) * 1000:7.1f}ms")  # fmt: skip
    lines.append(
        f"  5xx={len(results.server_errors)}  connection_errors={len(results.connection_errors)}  "
        f"corrupt={len(results.corrupt)}  range_bytes_checked={results.bytes_checked}"
    )
    return "\n".join(lines)


async def run_load(
    data_dir: Path, *, clients: int, requests: int, duration: float, users: int, seed: int, log_path: Path
) -> tuple[Results, float, int]:
    """Start the fake upstream and the real server, run the load, stop, check the data dir. Returns the
    results, the elapsed seconds, and the number of ready files checked on disk."""
    fake = FakeUpstream(audio_size=8000)
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server = ServerProcess(data_dir, f"http://127.0.0.1:{port}/v1", log_path, env={"SPECCY_UPSTREAM_CONCURRENCY": "16"})
    await server.start()
    try:
        load = Load(server.url, users, fake.audio_size, seed)
        started = time.monotonic()
        results = await load.run(clients, requests, duration)
        elapsed = time.monotonic() - started
    finally:
        await server.kill(signal.SIGTERM)
        await runner.cleanup()
    ready = check_data_dir(data_dir, quiet=False)
    return results, elapsed, len(ready)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=40_000, help="stop after this many requests")
    parser.add_argument("--duration", type=float, default=60.0, help="or after this many seconds")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # The fake upstream logs a traceback for each call cut off when the server stops; that is expected here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        results, elapsed, ready = asyncio.run(
            run_load(
                Path(tmp) / "data",
                clients=args.clients,
                requests=args.requests,
                duration=args.duration,
                users=args.users,
                seed=args.seed,
                log_path=Path(tmp) / "server.log",
            )
        )
    print(f"load: clients={args.clients} users={args.users} seed={args.seed}")
    print(report(results, elapsed))
    print(f"  ready files verified on disk after the run: {ready}")
    for problem in (results.server_errors + results.connection_errors + results.corrupt)[:20]:
        print("  PROBLEM", problem)
    ok = not (results.server_errors or results.connection_errors or results.corrupt)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
