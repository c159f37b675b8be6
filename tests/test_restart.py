"""Restarts that drop nothing: the test holds the listening socket as systemd's speccyd.socket does, restarts
`speccyd serve` on it under a bounded client load, and counts every connection error and failed request.

Also: what a restart means for a generation in flight (it resumes under the same id, nothing is lost), and a
SIGTERM during start-up when speccyd is PID 1 (a container without an init), which the kernel would drop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually, sign_in
from tests.fake_upstream import FakeUpstream
from tests.server_process import ServerProcess, listening_socket

pytestmark = pytest.mark.process

WORKERS = 6  # concurrent clients, each on its own kept-alive connections
MAX_REQUESTS = 20_000  # the load's bound whatever happens; about 2,000-4,000 are made
REQUESTS_AROUND_A_RESTART = 300  # requests answered before each restart, and again after it
TEXT = "Restarts drop nothing."


@dataclass
class Load:
    """What the clients saw: every request counted, every connection error and failed request described."""

    requests: int = 0
    connection_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    done: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds) of each request

    def longest(self, since: float, until: float) -> float:
        """The longest a request that started between `since` and `until` waited for its answer."""
        return max((seconds for started, seconds in self.done if since <= started <= until), default=0.0)


Request = Callable[[aiohttp.ClientSession], Awaitable[str | None]]  # None when the answer is right


def request_mix(headers: dict[str, str], file: dict[str, Any], audio: bytes) -> list[Request]:
    async def health(http: aiohttp.ClientSession) -> str | None:
        async with http.get("/healthz") as r:
            return None if r.status == 200 else f"GET /healthz: {r.status}"

    async def cache_hit(http: aiohttp.ClientSession) -> str | None:
        async with http.post("/tts/generate", json={"text": TEXT}, headers=headers) as r:
            body = await r.json()
            return None if (r.status, body["file_id"]) == (200, file["file_id"]) else f"POST /tts/generate: {r.status}"

    async def download(http: aiohttp.ClientSession) -> str | None:
        async with http.get(file["url"]) as r:
            data = await r.read()
            return None if (r.status, data) == (200, audio) else f"GET /files: {r.status}, {len(data)} bytes"

    async def library(http: aiohttp.ClientSession) -> str | None:
        async with http.get("/files?limit=10", headers=headers) as r:
            return None if r.status == 200 and (await r.json())["files"] else f"GET /files?limit: {r.status}"

    return [health, cache_hit, download, library]


async def client(base_url: str, mix: list[Request], offset: int, stop: asyncio.Event, load: Load) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url=base_url, timeout=timeout) as http:
        for request in itertools.islice(itertools.cycle(mix), offset, None):
            if stop.is_set() or load.requests >= MAX_REQUESTS:
                return
            started = time.monotonic()
            try:
                problem = await request(http)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                load.connection_errors.append(f"{request.__name__}: {type(e).__name__}: {e}")
            else:
                if problem is not None:
                    load.failed.append(problem)
            load.requests += 1
            load.done.append((started, time.monotonic() - started))


async def slow_download(url: str, expected: bytes, started: asyncio.Event) -> tuple[bytes, float]:
    """A download read 64 KiB every 20 ms (a phone on poor Wi-Fi): its bytes and when it ended."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        data = bytearray()
        async for block in response.content.iter_chunked(64 * 1024):
            data += block
            started.set()
            await asyncio.sleep(0.02)
        return bytes(data), time.monotonic()


async def test_restart_on_the_held_socket_drops_nothing(tmp_path: Path, upstream_url: str, fake: FakeUpstream) -> None:
    """Two restarts under load, one with a slow download in flight: no connection error, no failed request."""
    fake.audio_size = 256 * 1024
    with listening_socket() as held:
        base_url = f"http://127.0.0.1:{held.getsockname()[1]}"
        server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", listen=held)
        async with server:
            await server.start()
            async with aiohttp.ClientSession(base_url=base_url) as http:
                headers = await sign_in(http)
                async with http.post("/tts/generate", json={"text": TEXT}, headers=headers) as r:
                    job = await r.json()
                await eventually(lambda: _ready(http, headers, job), what="the first file")
                audio = FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)
                async with http.post("/tts/generate", json={"text": TEXT}, headers=headers) as r:
                    file = await r.json()  # the cache hit's answer: the signed URL the clients download
                fake.audio_size = 24 * 1024 * 1024  # a long recording, for the slow download
                async with http.post("/tts/generate", json={"text": "A long one."}, headers=headers) as r:
                    long_job = await r.json()
                await eventually(lambda: _ready(http, headers, long_job), what="the long file")
                long_audio = FakeUpstream.audio_for(fake.speech_calls[1].body or {}, fake.audio_size)

            load, stop = Load(), asyncio.Event()
            mix = request_mix(headers, file, audio)
            clients = [asyncio.create_task(client(base_url, mix, i, stop, load)) for i in range(WORKERS)]
            figures: list[str] = []
            try:
                for restart in (1, 2):
                    before = load.requests
                    await eventually(lambda b=before: load.requests >= b + REQUESTS_AROUND_A_RESTART, 30, "load")
                    slow = None
                    if restart == 2:
                        first_bytes = asyncio.Event()
                        slow = asyncio.create_task(
                            slow_download(f"{base_url}{long_job['url']}", long_audio, first_bytes)
                        )
                        await asyncio.wait_for(first_bytes.wait(), 10)
                    signalled = time.monotonic()
                    assert await server.stop() == 0  # SIGTERM: stop accepting, drain, exit (systemctl stop)
                    exited = time.monotonic()
                    await server.start()  # the same socket, as systemctl start hands it over
                    serving = time.monotonic()
                    at_restart = load.requests
                    await eventually(lambda a=at_restart: load.requests >= a + REQUESTS_AROUND_A_RESTART, 30, "load")
                    line = (
                        f"restart {restart}: drain {exited - signalled:.2f}s, start-up {serving - exited:.2f}s, "
                        f"longest pause {load.longest(signalled - 1, serving):.2f}s"
                    )
                    if slow is not None:
                        data, ended = await asyncio.wait_for(slow, 60)
                        assert data == long_audio  # all of it, from the old process, while it drained
                        assert ended > signalled
                        line += (
                            f", slow download of {len(data) // 2**20} MiB ended {ended - signalled:.2f}s after SIGTERM"
                        )
                    figures.append(line)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            total = (
                f"{load.requests} requests, {len(load.connection_errors)} connection errors, {len(load.failed)} failed"
            )
            print("\n".join([total, *figures]))
            assert load.connection_errors == []
            assert load.failed == []
            assert load.requests >= 4 * REQUESTS_AROUND_A_RESTART
            assert await server.stop() == 0
        assert "Traceback" not in server.log
        assert len(fake.speech_calls) == 2  # everything else came from the cache, across both restarts


async def _ready(http: aiohttp.ClientSession, headers: dict[str, str], job: dict[str, Any]) -> bool:
    async with http.get(f"/tts/{job['content_hash']}/status", headers=headers) as r:
        return r.status == 200 and (await r.json())["status"] == "ready"


async def test_generation_in_flight_resumes_across_a_restart(
    tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """A restart mid-generation: the same file id resumes in the new process and becomes ready; a client polling
    its status across the restart never sees an error; a live download is cut (never short and "complete")."""
    fake.gate.clear()  # the upstream holds the first call until the test lets it go
    with listening_socket() as held:
        base_url = f"http://127.0.0.1:{held.getsockname()[1]}"
        server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", listen=held)
        async with server, aiohttp.ClientSession(base_url=base_url) as http:
            await server.start()
            headers = await sign_in(http)
            async with http.post("/tts/generate", json={"text": "In flight."}, headers=headers) as r:
                assert r.status == 202
                job = await r.json()
            await eventually(lambda: len(fake.speech_calls) == 1, what="the upstream call")

            statuses: list[str] = []
            poll_errors: list[str] = []

            async def poll() -> None:
                async with aiohttp.ClientSession(base_url=base_url) as poller:
                    while not statuses or statuses[-1] != "ready":
                        try:
                            async with poller.get(f"/tts/{job['content_hash']}/status", headers=headers) as r:
                                body = await r.json()
                                assert body["file_id"] == job["file_id"]
                                statuses.append(body["status"])
                        except (aiohttp.ClientError, OSError) as e:
                            poll_errors.append(f"{type(e).__name__}: {e}")
                        await asyncio.sleep(0.02)

            async def live() -> str:
                try:
                    async with http.get(f"/files/{job['file_id']}", headers=headers) as r:
                        assert r.status == 200
                        await r.read()
                except aiohttp.ClientPayloadError as e:
                    return f"cut: {type(e).__name__}"
                return "complete"

            poller = asyncio.create_task(poll())
            reader = asyncio.create_task(live())
            await eventually(lambda: len(statuses) >= 5, what="polling")
            assert await server.stop() == 0
            assert (await asyncio.wait_for(reader, 10)).startswith("cut")
            await server.start()
            assert "resumed 1 generations" in server.log
            await eventually(lambda: len(fake.speech_calls) == 2, what="the resumed upstream call")
            fake.gate.set()
            await asyncio.wait_for(poller, 30)
            assert poll_errors == []
            assert set(statuses) == {"generating", "ready"}
            async with http.get(f"/files/{job['file_id']}", headers=headers) as r:
                assert r.status == 200
                assert await r.read() == FakeUpstream.audio_for(fake.speech_calls[1].body or {}, fake.audio_size)
            async with http.post("/tts/generate", json={"text": "In flight."}, headers=headers) as r:
                assert (r.status, (await r.json())["file_id"]) == (200, job["file_id"])
            assert len(fake.speech_calls) == 2  # the cancelled call and the resumed one; nothing more
            assert await server.stop() == 0


def _child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _signal_mask(pid: int, field_name: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field_name}:\s*([0-9a-f]+)$", status, re.M)
    return int(match.group(1), 16) if match else 0


SIGTERM_BIT = 1 << (signal.SIGTERM - 1)
# What packaging/docker-entrypoint does as PID 1 before it execs speccyd: the stop signals blocked.
_BLOCK_AND_EXEC = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


@pytest.mark.parametrize("when", ["handler installed", "before speccyd runs"])
async def test_sigterm_during_start_up_as_pid_1(tmp_path: Path, upstream_url: str, when: str) -> None:
    """As PID 1 of its own pid namespace, a SIGTERM from outside during start-up (once `serve` has its handler,
    or even before speccyd runs, under the entrypoint's blocked mask) stops it cleanly at once, exit 0."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) to make a pid namespace")
    prefix = ["unshare", "--pid", "--fork", "--kill-child"]
    if when == "before speccyd runs":
        prefix += [sys.executable, "-c", _BLOCK_AND_EXEC]
    server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", prefix=prefix)
    async with server:
        offset = await server.spawn()
        child = await eventually(lambda: _child_of(server.process.pid), what="the process in the namespace")
        assert re.search(r"^NSpid:\s+\d+\s+1$", Path(f"/proc/{child}/status").read_text(), re.M)  # PID 1 inside
        if when == "handler installed":
            await eventually(lambda: _signal_mask(child, "SigCgt") & SIGTERM_BIT, what="the SIGTERM handler")
        else:
            await eventually(lambda: _signal_mask(child, "SigBlk") & SIGTERM_BIT, what="the blocked mask")
        assert "listening on" not in server.log[offset:]
        signalled = time.monotonic()
        os.kill(child, signal.SIGTERM)  # from the parent namespace, as `docker stop` sends it
        assert await asyncio.wait_for(server.process.wait(), 20) == 0
        seconds = time.monotonic() - signalled
    log = server.log[offset:]
    assert "stop requested during start-up" in log, log
    assert "listening on" not in log
    assert seconds < 5, f"took {seconds:.1f}s"


# A SIGHUP already pending when speccyd starts: blocked, sent to itself, then exec.
_PENDING_HUP = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})\n"
    "os.kill(os.getpid(), signal.SIGHUP)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


async def test_a_reload_asked_during_start_up_happens_once_serving(tmp_path: Path, upstream_url: str) -> None:
    """A SIGHUP that comes before the server serves is neither lost nor fatal: it reloads once serving."""
    server = ServerProcess(
        tmp_path / "data", upstream_url, tmp_path / "log", prefix=[sys.executable, "-c", _PENDING_HUP]
    )
    async with server:
        await server.start()
        await eventually(lambda: "SIGHUP: reloaded" in server.log, what="the reload")
        assert server.log.index("SIGHUP: reloaded") > server.log.index("listening on")
        assert await server.stop() == 0
