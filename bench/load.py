"""Bounded load on loopback: many users signing in, hitting the cache (by /tts/generate and by the OpenAI-style
/v1/audio/speech with their key), missing it, polling, downloading ranges, reading files live while they are
generated, syncing their library page by page and deleting, against the real `speccyd serve` and the fake
upstream.

    .venv/bin/python bench/load.py --clients 200 --requests 40000 --duration 60

Pass: zero 5xx, zero connection errors, every byte downloaded (ranges, /v1 audio, live streams) equal to what
the upstream sent, no library page listing another user's file, and the data dir's invariants intact
afterwards. Prints p50/p99 per operation. tests/test_load.py runs a short form in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    cursor: str = "0"  # where this user's library sync stands


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    connection_errors: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # library entries of another user (must stay empty)
    requests: int = 0
    bytes_checked: int = 0
    live_streams: int = 0  # downloads answered while the file was still being generated


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
        self.owner: dict[str, str] = {}  # file id -> the key of the user who created it
        self.listed: list[tuple[str, str]] = []  # (user key, file id) of every library entry seen

    async def _call(
        self,
        http: aiohttp.ClientSession,
        op: str,
        method: str,
        path: str,
        capture: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            async with http.request(method, self.url + path, **kwargs) as response:
                data = await response.read()
                if capture is not None:
                    capture.update(response.headers)
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
            user.token = json.loads(data)["session_token"]

    async def generate(self, http: aiohttp.ClientSession, user: User, text: str, op: str) -> None:
        status, data = await self._call(
            http, op, "POST", "/tts/generate", json={"text": text}, headers=self._auth(user)
        )
        if status in (200, 202):
            body = json.loads(data)
            self._created(user, body["file_id"], text)

    def _created(self, user: User, file_id: str, text: str) -> None:
        user.files[file_id] = text
        self.owner[file_id] = user.key
        if text not in user.texts:
            user.texts.append(text)

    def _check_audio(self, what: str, text: str, data: bytes, start: int = 0) -> None:
        if data != expected_audio(text, self.audio_size)[start : start + len(data)] or not data:
            self.results.corrupt.append(what)
        self.results.bytes_checked += len(data)

    async def v1_cache_hit(self, http: aiohttp.ClientSession, user: User) -> None:
        """An OpenAI-style client with the user's key, asking for a text it had before: the whole audio."""
        # As for downloads: not a file this load is deleting (a delete during the wait is a documented 409).
        choices = [(f, t) for f, t in user.files.items() if f not in self.deleting]
        if not choices:
            return
        file_id, text = self.rng.choice(choices)
        body = {"model": "tts-1", "voice": "alloy", "input": text}
        headers = {"Authorization": f"Bearer {user.key}"}
        response_headers: dict[str, str] = {}
        self.reading[file_id] += 1
        try:
            status, data = await self._call(http, "v1_cache_hit", "POST", "/v1/audio/speech", json=body,
                                            headers=headers, capture=response_headers)  # fmt: skip
        finally:
            self.reading[file_id] -= 1
        if status == 200:
            self._created(user, response_headers["X-Speccy-File-Id"], text)
            if len(data) != self.audio_size:
                self.results.corrupt.append(f"/v1 {text!r}: {len(data)} bytes")
            self._check_audio(f"/v1 {text!r}", text, data)

    async def library_page(self, http: aiohttp.ClientSession, user: User) -> None:
        """One page of the user's library sync; every entry is checked against its creator after the run."""
        path = f"/files?since={user.cursor}&limit=50"
        status, data = await self._call(http, "library_page", "GET", path, headers=self._auth(user))
        if status == 200:
            page = json.loads(data)
            self.listed += [(user.key, f["file_id"]) for f in page["files"]]
            self.listed += [(user.key, d["file_id"]) for d in page["deleted"]]
            user.cursor = "0" if not page["has_more"] and self.rng.random() < 0.2 else page["next_cursor"]
        elif status == 410:
            user.cursor = "0"

    async def live_stream(self, http: aiohttp.ClientSession, user: User) -> None:
        """A new text, read at once by its file id: streamed live while generating, then whole."""
        self.counter += 1
        text = f"live text {self.counter} for {user.key}"
        status, data = await self._call(
            http, "live_start", "POST", "/tts/generate", json={"text": text}, headers=self._auth(user)
        )
        if status not in (200, 202):
            return
        file_id = json.loads(data)["file_id"]
        self._created(user, file_id, text)
        self.reading[file_id] += 1
        response_headers: dict[str, str] = {}
        try:
            status, data = await self._call(http, "live_stream", "GET", f"/files/{file_id}",
                                            headers=self._auth(user), capture=response_headers)  # fmt: skip
        finally:
            self.reading[file_id] -= 1
        if status == 200:
            self.results.live_streams += response_headers.get("Cache-Control") == "no-store"
            if len(data) != self.audio_size:
                self.results.corrupt.append(f"live {file_id}: {len(data)} bytes")
            self._check_audio(f"live {file_id}", text, data)

    def foreign_entries(self) -> list[str]:
        """Library entries shown to a user who did not create that file (checked once every answer is in)."""
        return [f"{key} saw {file_id}" for key, file_id in self.listed if self.owner.get(file_id) != key]

    async def one(self, http: aiohttp.ClientSession) -> None:
        rng = self.rng
        user = rng.choice(self.users)
        if not user.token:
            await self.sign_in(http, user)
            return
        roll = rng.random()
        if roll < 0.04:
            await self.sign_in(http, user)
        elif roll < 0.26 and user.texts:
            await self.generate(http, user, rng.choice(user.texts), "cache_hit")
        elif roll < 0.34 or not user.files:
            self.counter += 1
            await self.generate(http, user, f"load text {self.counter} for {user.key}", "miss")
        elif roll < 0.42:
            await self.v1_cache_hit(http, user)
        elif roll < 0.5:
            await self.library_page(http, user)
        elif roll < 0.56:
            await self.live_stream(http, user)
        elif roll < 0.68:
            text = rng.choice(list(user.files.values()))
            from speccyd.generation.speech import content_hash

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
                self._check_audio(f"{file_id} bytes {start}-{end}", text, data, start)
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
        self.results.foreign = self.foreign_entries()
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
        f"corrupt={len(results.corrupt)}  foreign_library_entries={len(results.foreign)}  "
        f"bytes_checked={results.bytes_checked}  live_streams={results.live_streams}"
    )
    return "\n".join(lines)


async def run_load(
    data_dir: Path, *, clients: int, requests: int, duration: float, users: int, seed: int, log_path: Path
) -> tuple[Results, float, int]:
    """Start the fake upstream and the real server, run the load, stop, check the data dir. Returns the
    results, the elapsed seconds, and the number of ready files checked on disk."""
    # 8 blocks 10 ms apart: a generation lasts ~80 ms, so readers who come at once get the live stream.
    fake = FakeUpstream(audio_size=8000, chunk_delay=0.01)
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
    for problem in (results.server_errors + results.connection_errors + results.corrupt + results.foreign)[:20]:
        print("  PROBLEM", problem)
    ok = not (results.server_errors or results.connection_errors or results.corrupt or results.foreign)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
