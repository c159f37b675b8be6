"""Long text and instant playback, measured: `python -m bench.streaming` (add --quick for a short run).

Everything runs on 127.0.0.1: the fake upstream in this process, speccyd as a real `speccyd serve`
subprocess with its own temp data dir (so its RSS is its own). Every loop is bounded in count and time.

1. Time to first audio byte, cache miss, against an upstream that waits 500 ms before its first byte:
   straight from the upstream vs through speccyd (POST /tts/generate, then GET the file as it streams).
2. A 100,000-character document: first byte, and complete audio vs ceil(chunks / chunk_concurrency)
   x the upstream's per-call time.
3. Memory: peak RSS of the speccyd process while 20 readers stream a 50 MB file live, then again from the
   finished file.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from speccyd.config.settings import SPECS
from speccyd.generation.textplan import plan_text
from tests.fake_upstream import FakeUpstream, serve_fake

HOST = "127.0.0.1"  # loopback only
KEY = "sk-test-bench"
DEADLINE = 120.0  # no single phase may run longer than this
LATENCY = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def document(chars: int) -> str:
    paragraph = " ".join(f"Sentence {i} of a long specification, read aloud by Speccy." for i in range(12))
    text = ""
    n = 0
    while len(text) < chars:
        text += f"Section {n}. {paragraph}\n\n"
        n += 1
    return text[:chars].rstrip() + "."


class Speccyd:
    """`speccyd serve` in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, upstream: str) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SPECCY_")},
            "SPECCY_OPENAI_BASE_URL": upstream,
            "SPECCY_MDNS": "off",
            "SPECCY_RATE_LIMIT": "off",
            "SPECCY_LOG_LEVEL": "warning",
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "speccyd",
                "serve",
                "--data-dir",
                str(data_dir),
                "--host",
                HOST,
                "--port",
                str(self.port),
            ],
            env=env,
        )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{self.base}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("speccyd did not start within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def first_byte_and_total(response: aiohttp.ClientResponse, start: float) -> tuple[float, float, int]:
    first = None
    size = 0
    async for block in response.content.iter_any():
        if first is None:
            first = time.perf_counter() - start
        size += len(block)
    if first is None:
        raise RuntimeError("empty response")
    return first, time.perf_counter() - start, size


async def direct_call(session: aiohttp.ClientSession, upstream: str, text: str) -> tuple[float, float]:
    start = time.perf_counter()
    body = {"input": text, "model": "tts-1", "voice": "alloy", "response_format": "mp3"}
    async with session.post(f"{upstream}/audio/speech", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        first, total, _ = await first_byte_and_total(r, start)
    return first, total


async def via_speccyd(
    session: aiohttp.ClientSession, server: Speccyd, auth: dict[str, str], text: str, fmt: str = "mp3"
) -> tuple[float, float, str]:
    """POST generate (a cache miss) and stream the file: seconds to first byte and to the end, from the POST."""
    start = time.perf_counter()
    async with session.post(f"{server.base}/tts/generate", json={"text": text, "format": fmt}, headers=auth) as r:
        created = await r.json()
        if r.status != 202:
            raise RuntimeError(f"expected a cache miss, got {r.status}: {created}")
    async with session.get(f"{server.base}/files/{created['file_id']}", headers=auth) as r:
        first, total, _ = await first_byte_and_total(r, start)
    return first, total, str(created["file_id"])


async def bounded(what: str, step: Awaitable[Any]) -> Any:
    try:
        return await asyncio.wait_for(step, DEADLINE)
    except TimeoutError:
        raise SystemExit(f"{what} took longer than {DEADLINE:.0f}s; aborted") from None


def row(name: str, value: str, goal: str, ok: bool) -> None:
    print(f"  {name:<52} {value:>12}   goal {goal:<18} {'OK' if ok else 'MISSED'}")


async def main(quick: bool) -> int:
    fake = FakeUpstream(latency=LATENCY, audio_size=48_000, chunk_size=4_000, chunk_delay=0.02)
    runner, upstream = await serve_fake(fake, HOST)
    missed = 0
    with tempfile.TemporaryDirectory(prefix="speccyd-bench-") as tmp:
        server = Speccyd(Path(tmp) / "data", upstream)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
                await server.ready(session)
                async with session.post(f"{server.base}/auth/verify", json={"openai_token": KEY}) as r:
                    auth = {"Authorization": f"Bearer {(await r.json())['session_token']}"}

                # 1. first byte, cache miss
                runs = 3 if quick else 7
                direct = [
                    await bounded("direct call", direct_call(session, upstream, f"direct {i}")) for i in range(runs)
                ]
                through = [
                    await bounded("speccyd call", via_speccyd(session, server, auth, f"miss {i}")) for i in range(runs)
                ]
                direct_first = statistics.median(d[0] for d in direct)
                speccyd_first = statistics.median(t[0] for t in through)
                per_call = statistics.median(d[1] for d in direct)
                added_ms = (speccyd_first - direct_first) * 1000
                print(
                    f"\nTime to first audio byte, cache miss (upstream waits {LATENCY * 1000:.0f} ms; median of {runs})"
                )
                print(f"  {'straight from the upstream':<52} {direct_first * 1000:>9.1f} ms")
                print(f"  {'through speccyd (POST generate + GET /files)':<52} {speccyd_first * 1000:>9.1f} ms")
                row("added by speccyd", f"{added_ms:.1f} ms", "<= 20 ms", added_ms <= 20)
                missed += added_ms > 20

                # 2. a 100,000-character document
                chars = 20_000 if quick else 100_000
                text = document(chars)
                # One upstream call per read-along piece (timeline_chars, textplan.py), as speccyd cuts it.
                chunks = len(plan_text(text, min(int(SPECS["timeline_chars"].default), 4096)).pieces)
                rounds = math.ceil(chunks / 4)
                # pcm: the fake upstream's bytes are not mp3 frames, which a joined mp3 would keep none of.
                first, total, _ = await bounded("long document", via_speccyd(session, server, auth, text, "pcm"))
                budget = 1.3 * rounds * per_call
                print(f"\nA {chars:,}-character document: {chunks} chunks, chunk_concurrency 4,", end=" ")
                print(f"upstream call {per_call:.2f} s")
                row("first audio byte", f"{first * 1000:.0f} ms", "<= 1000 ms", first <= 1.0)
                row("complete audio", f"{total:.2f} s", f"<= {budget:.2f} s", total <= budget)
                missed += (first > 1.0) + (total > budget)

                # 3. memory while 20 readers stream a 50 MB file
                size = (10 if quick else 50) * 1_000_000
                fake.latency, fake.audio_size, fake.chunk_size, fake.chunk_delay = 0.0, size, 256 * 1024, 0.005
                idle = rss_mb(server.process.pid)
                live_peak = await bounded(
                    "live readers", readers(session, server, auth, 20, sampler(server.process.pid))
                )
                file_peak = await bounded(
                    "file readers", readers(session, server, auth, 20, sampler(server.process.pid), again=True)
                )
                print(f"\nMemory: 20 readers of a {size // 1_000_000} MB file (speccyd RSS; {idle:.0f} MB before)")
                row("peak RSS, streaming while it generates", f"{live_peak:.0f} MB", "<= 100 MB", live_peak <= 100)
                row("peak RSS, serving the finished file", f"{file_peak:.0f} MB", "<= 100 MB", file_peak <= 100)
                missed += (live_peak > 100) + (file_peak > 100)
        finally:
            server.stop()
            await runner.cleanup()
    print(f"\n{'all goals met' if not missed else f'{missed} goal(s) missed'}")
    return 1 if missed else 0


def sampler(pid: int) -> Callable[[asyncio.Event], Awaitable[float]]:
    async def sample(stop: asyncio.Event) -> float:
        peak = 0.0
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.02)
        return max(peak, rss_mb(pid))

    return sample


_big_file: dict[str, str] = {}


async def readers(
    session: aiohttp.ClientSession,
    server: Speccyd,
    auth: dict[str, str],
    count: int,
    sample: Callable[[asyncio.Event], Awaitable[float]],
    again: bool = False,
) -> float:
    """`count` readers of one big file at once (live on the first call, the finished file `again`); peak RSS."""
    if not again:
        async with session.post(
            f"{server.base}/tts/generate", json={"text": "A very long recording."}, headers=auth
        ) as r:
            _big_file["id"] = (await r.json())["file_id"]
    url = f"{server.base}/files/{_big_file['id']}"
    stop = asyncio.Event()
    peak = asyncio.create_task(sample(stop))

    async def read() -> int:
        async with session.get(url, headers=auth) as r:
            size = 0
            async for block in r.content.iter_chunked(1024 * 1024):
                size += len(block)
            return size

    sizes = await asyncio.gather(*(read() for _ in range(count)))
    stop.set()
    if len(set(sizes)) != 1:
        raise RuntimeError(f"readers got different sizes: {sorted(set(sizes))}")
    return await peak


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller document and file (CI smoke run)")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
