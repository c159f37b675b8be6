"""SIGKILL at random moments under a mixed workload: after every restart nothing stored is lost or broken.

Replay a failure with SPECCY_CRASH_SEED=<seed printed by the test>. The CI form runs 20 cycles (most of its
time is 20 server starts); the long form is SPECCY_CRASH_CYCLES=200 with the same test.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fake_upstream import FakeUpstream
from tests.invariants import check_data_dir, statuses
from tests.server_process import ServerProcess

pytestmark = pytest.mark.process

USERS = [f"sk-test-crash-user-{i}" for i in range(4)]
TEXTS = [f"Crash test sentence number {i}." for i in range(40)]


class Workload:
    """Clients doing what apps do; every error is expected, since the server dies under them."""

    def __init__(self, rng: random.Random, url: str, tokens: dict[str, str]) -> None:
        self.rng = rng
        self.url = url
        self.tokens = tokens
        self.files: dict[str, str] = {}  # file id -> owner key, as learned from responses

    def _headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[key]}"}

    async def _one(self, http: aiohttp.ClientSession) -> None:
        key = self.rng.choice(USERS)
        op = self.rng.random()
        if op < 0.5:
            body = {"text": self.rng.choice(TEXTS), "voice": self.rng.choice(["alloy", "nova"])}
            async with http.post(f"{self.url}/tts/generate", json=body, headers=self._headers(key)) as r:
                if r.status in (200, 202):
                    self.files[(await r.json())["file_id"]] = key
        elif op < 0.7 and self.files:
            file_id = self.rng.choice(list(self.files))
            headers = {**self._headers(self.files[file_id]), "Range": "bytes=0-99"}
            async with http.get(f"{self.url}/files/{file_id}", headers=headers) as r:
                await r.read()
        elif op < 0.8 and self.files:
            file_id = self.rng.choice(list(self.files))
            async with http.delete(f"{self.url}/tts/{file_id}", headers=self._headers(self.files[file_id])) as r:
                await r.read()
        elif op < 0.9:
            async with http.post(f"{self.url}/auth/verify", json={"openai_token": key}) as r:
                if r.status == 200:
                    self.tokens[key] = (await r.json())["session_token"]
        else:
            async with http.get(f"{self.url}/user/usage", headers=self._headers(key)) as r:
                await r.read()

    async def run(self, http: aiohttp.ClientSession, clients: int = 8) -> None:
        async def client() -> None:
            while True:
                try:
                    await self._one(http)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(client() for _ in range(clients)))


async def _settle(data_dir: Path, timeout: float = 20.0) -> None:
    """Wait until the restarted server has finished (or failed) every resumed generation."""
    deadline = asyncio.get_running_loop().time() + timeout
    while "generating" in statuses(data_dir / "speccyd.db").values():
        assert asyncio.get_running_loop().time() < deadline, "rows stuck in 'generating' after restart"
        await asyncio.sleep(0.05)


async def _served(http: aiohttp.ClientSession, url: str, file_id: str, token: str, limit: asyncio.Semaphore) -> bytes:
    async with limit, http.get(f"{url}/files/{file_id}", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, f"{file_id}: {r.status} {await r.text()}"
        return await r.read()


async def crash_cycles(cycles: int, seed: int, tmp_path: Path, upstream_url: str, fake: FakeUpstream) -> dict[str, Any]:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, upstream_url, tmp_path / "server.log")
    # Audio arrives in a few chunks over ~40 ms, so kills land before, during and after generations.
    fake.chunk_delay = 0.01
    figures: dict[str, Any] = {"cycles": 0, "kills_mid_generation": 0, "files_checked": 0}
    async with server, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await server.start()
        tokens: dict[str, str] = {}
        for key in USERS:
            async with http.post(f"{server.url}/auth/verify", json={"openai_token": key}) as r:
                assert r.status == 200
                tokens[key] = (await r.json())["session_token"]
        workload = Workload(rng, server.url, tokens)
        limit = asyncio.Semaphore(16)
        for _cycle in range(cycles):
            task = asyncio.create_task(workload.run(http))
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            await server.kill(signal.SIGKILL)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if "generating" in statuses(data_dir / "speccyd.db").values():
                figures["kills_mid_generation"] += 1
            before = check_data_dir(data_dir, quiet=False, settled=False)

            t0 = time.monotonic()
            await server.start()
            t1 = time.monotonic()
            workload.url = server.url
            await _settle(data_dir)
            t2 = time.monotonic()
            after = check_data_dir(data_dir)
            t3 = time.monotonic()
            lost = set(before) - set(after)
            assert not lost, f"ready files lost across the crash: {lost}"
            # Every ready file from before the kill, fetched over HTTP (concurrently, to keep a cycle short).
            known = [(file_id, row.sha256) for file_id, row in before.items() if file_id in workload.files]
            fetched = await asyncio.gather(
                *(_served(http, server.url, file_id, tokens[workload.files[file_id]], limit) for file_id, _ in known)
            )
            for (file_id, sha256), data in zip(known, fetched, strict=True):
                assert hashlib.sha256(data).hexdigest() == sha256, f"{file_id} served different bytes"
            figures["files_checked"] += len(known)
            for phase, seconds in (
                ("start", t1 - t0),
                ("settle", t2 - t1),
                ("disk", t3 - t2),
                ("http", time.monotonic() - t3),
            ):
                figures[f"seconds_{phase}"] = figures.get(f"seconds_{phase}", 0.0) + seconds
            figures["cycles"] += 1
        await server.kill(signal.SIGTERM)
    figures["ready_at_end"] = len(check_data_dir(data_dir))
    figures["tokens"] = list(tokens.values())
    return figures


def _seed() -> int:
    return int(os.environ.get("SPECCY_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))


async def test_sigkill_under_load_loses_nothing(tmp_path: Path, upstream_url: str, fake: FakeUpstream) -> None:
    """20 SIGKILLs at random moments: DB intact, every ready file whole and served, no orphans, no stuck rows."""
    seed = _seed()
    cycles = int(os.environ.get("SPECCY_CRASH_CYCLES", "20"))
    print(f"crash test seed={seed} cycles={cycles} (replay: SPECCY_CRASH_SEED={seed})")
    figures = await crash_cycles(cycles, seed, tmp_path, upstream_url, fake)
    shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items() if k != "tokens"}
    print(f"crash test figures: {shown}")
    assert figures["cycles"] == cycles
    assert figures["ready_at_end"] > 0
