"""speccyd core benchmark: downloads and cache hits against bare aiohttp, and event-loop lag during cleanup.

Run from the repository root:  python -m bench.core      (--help for the knobs)

Three processes on 127.0.0.1: this one (fake upstream + load generator), speccyd, and a bare aiohttp
reference. Each figure is measured alternately against its reference in the same run, after a warm-up.
Exit status 0 when every goal passes, 1 when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import wrk
from bench.servers import bench_settings, serve_reference, serve_speccyd
from bench.wrk import Load
from speccyd.storage.blobs import LocalBlobs
from tests.conftest import generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, serve_fake

ROOT = Path(__file__).resolve().parent.parent
AUDIO_SIZE = 1024 * 1024  # the 1 MB download
DOWNLOAD_GOAL = 0.9  # speccyd downloads at >= 0.9x a bare FileResponse handler
CACHE_HIT_GOAL = 0.6  # cache-hit generates at >= 0.6x a bare JSON handler
EXPIRED_ROWS = 5000
GENERATE_BODY = {"text": "The benchmark reads this sentence aloud.", "voice": "alloy", "model": "tts-1"}
# The /v1 hit sends audio back: small, so the figure is about the request, not about copying a megabyte.
V1_AUDIO_SIZE = 16 * 1024
V1_KEY = "sk-test-bench-v1"
V1_BODY = {"model": "tts-1", "voice": "nova", "input": "An OpenAI client asks for this sentence."}
START_TIMEOUT = 30.0


@dataclass
class Server:
    name: str
    process: asyncio.subprocess.Process
    ports: dict[str, int]

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the server stops when its stdin closes
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def start_server(name: str, args: list[str], log: Path) -> Server:
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.core", *args,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    except TimeoutError:
        process.kill()
        raise SystemExit(f"{name} did not start within {START_TIMEOUT:.0f}s; see {log}") from None
    if not line:
        raise SystemExit(f"{name} exited at startup; see {log}:\n{_tail(log)}")
    return Server(name, process, json.loads(line))


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@dataclass
class Prepared:
    auth: dict[str, str]  # the Authorization header of the signed-in bench user
    file_id: str
    answer: dict[str, Any]  # speccyd's cache-hit response, which the reference answers verbatim
    v1_file_id: str  # the small file a /v1/audio/speech cache hit sends


async def prepare(port: int, fake: FakeUpstream) -> Prepared:
    """Create the 1 MB file the way a client does: sign in, generate, wait until ready, check the bytes."""
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(base) as http:
        auth = await sign_in(http, "sk-test-bench")
        status, first = await generate(http, auth, **GENERATE_BODY)
        assert status == 202, first
        await wait_status(http, auth, first["content_hash"], timeout=30)
        async with http.get(f"/files/{first['file_id']}", headers=auth) as r:
            assert r.status == 200, await r.text()
            audio = await r.read()
        assert audio == FakeUpstream.audio_for(fake.speech_calls[0].body or {}, AUDIO_SIZE), "wrong bytes served"
        async with http.post("/tts/generate", json=GENERATE_BODY, headers=auth) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert len(fake.speech_calls) == 1, "the cache hit called the upstream"
        fake.audio_size = V1_AUDIO_SIZE
        v1_headers = {"Authorization": f"Bearer {V1_KEY}"}
        async with http.post("/v1/audio/speech", json=V1_BODY, headers=v1_headers) as r:
            assert r.status == 200, await r.text()
            v1_file_id = r.headers["X-Speccy-File-Id"]
            assert await r.read() == FakeUpstream.audio_for(fake.speech_calls[1].body or {}, V1_AUDIO_SIZE)
        async with http.post("/v1/audio/speech", json=V1_BODY, headers=v1_headers) as r:
            assert r.status == 200 and len(await r.read()) == V1_AUDIO_SIZE
        assert len(fake.speech_calls) == 2, "the /v1 cache hit called the upstream"
    return Prepared(auth, first["file_id"], answer, v1_file_id)


@dataclass
class Case:
    """One load: a server and the request to send it."""

    server: Server
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.ports['port']}{self.path}"


async def measure(case: Case, args: argparse.Namespace, seconds: float | None = None) -> Load:
    # On a worker thread: this loop serves the fake upstream meanwhile (a key check may need it).
    result = await asyncio.to_thread(
        wrk.run,
        case.url(),
        server_pid=case.server.pid,
        method=case.method,
        headers=case.headers,
        body=case.body,
        connections=args.concurrency,
        seconds=seconds or args.seconds,
        cap=args.cap,
    )
    if result.bad:
        raise SystemExit(f"{case.server.name} {case.method} {case.path}: {result.bad} failed requests")
    return result


def _row(label: str, results: list[Load]) -> str:
    per_round = " ".join(f"{r.rate:6.0f}" for r in results)
    us = statistics.median(r.server_us_per_request for r in results)
    server = statistics.median(r.server_cpu for r in results)
    client = statistics.median(r.client_cpu for r in results)
    return (
        f"  {label:<16} {statistics.median(r.rate for r in results):7.0f} req/s  [{per_round}]  "
        f"server {us:6.0f} us/req, {server * 100:3.0f}% cpu; wrk {client * 100:3.0f}% cpu"
    )


async def compare(title: str, speccyd: Case, reference: Case, goal: float | None, args: argparse.Namespace) -> bool:
    """Warm up both, then alternate them round by round (order swapped each round) and compare medians.

    A round in which wrk used most of its core is refused: the figure would measure the client.
    """
    await measure(speccyd, args, 1.0)
    await measure(reference, args, 1.0)
    ours: list[Load] = []
    theirs: list[Load] = []
    for round_no in range(args.rounds):
        pair = [(speccyd, ours), (reference, theirs)]
        for case, results in pair if round_no % 2 == 0 else reversed(pair):
            results.append(await measure(case, args))
    ratio = statistics.median(r.rate for r in ours) / statistics.median(r.rate for r in theirs)
    client_bound = [r for r in ours + theirs if r.client_bound]
    passed = (goal is None or ratio >= goal) and not client_bound
    print(f"\n{title}")
    print(_row("speccyd", ours))
    print(_row("bare aiohttp", theirs))
    verdict = "report" if goal is None else f"goal >= {goal}x   {'PASS' if passed else 'FAIL'}"
    print(f"  ratio {ratio:.2f}x (req/s, medians)   {verdict}")
    ours_us = statistics.median(r.server_us_per_request for r in ours)
    theirs_us = statistics.median(r.server_us_per_request for r in theirs)
    # Not the goal, but steadier when other programs share the cores: the CPU each request costs.
    print(f"  ratio {theirs_us / ours_us:.2f}x by server CPU per request (informational)")
    if client_bound:
        print(f"  REFUSED: wrk used >= {wrk.CLIENT_BOUND:.0%} of its core in {len(client_bound)} rounds")
    return passed


async def access_log_cost(control: int, download: Case, hit: Case, args: argparse.Namespace) -> None:
    """speccyd at log_level=info (one access-log line per request, to stderr, here a file) against
    warning, alternately in the same process: the price of the access log, reported but not a goal."""
    print("\naccess log: speccyd at log_level=info vs warning (stderr to a file), alternating")

    async def level(name: str) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{control}/log-level?level={name}") as r,
        ):
            assert r.status == 200, await r.text()

    for label, case in (("download", download), ("cache hit", hit)):
        quiet: list[Load] = []
        loud: list[Load] = []
        for _ in range(max(1, args.rounds // 2 + 1)):
            await level("info")
            loud.append(await measure(case, args))
            await level("warning")
            quiet.append(await measure(case, args))
        print(_row(f"{label} info", loud))
        print(_row(f"{label} warn", quiet))
        ratio = statistics.median(r.rate for r in loud) / statistics.median(r.rate for r in quiet)
        print(f"  {label}: info runs at {ratio:.2f}x the req/s of warning")


async def lag_report(control: int) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{control}") as http:

        async def post(path: str) -> dict[str, Any]:
            async with http.post(path, timeout=aiohttp.ClientTimeout(total=120)) as r:
                assert r.status == 200, await r.text()
                body: dict[str, Any] = await r.json()
                return body

        print(
            f"\nevent-loop lag in the speccyd process (1 ms heartbeat) during a cleanup of {EXPIRED_ROWS} expired rows"
        )
        for mode, label in (
            ("idle", "nothing running (floor)"),
            ("thread", "cleanup on the store thread (speccyd)"),
            ("loop", "same cleanup run on the loop (reference)"),
        ):
            if mode != "idle":
                seeded = await post(f"/seed?count={EXPIRED_ROWS}")
                assert seeded["seeded"] == EXPIRED_ROWS
            lag = await post(f"/lag?mode={mode}")
            if mode != "idle":
                assert lag["removed"] == EXPIRED_ROWS, lag
            print(
                f"  {label:<42} {lag['seconds'] * 1000:7.0f} ms   max lag {lag['max_lag_ms']:7.1f} ms"
                f"   p99 {lag['p99_lag_ms']:5.1f} ms   ({lag['beats']} beats)"
            )


def _load() -> str:
    """The 1-minute load average: other programs on the cores make every req/s figure noisier."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


async def bench(args: argparse.Namespace) -> bool:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="speccyd-bench-"))
    data_dir = workdir / "data"
    log = workdir / "servers.log"
    fake = FakeUpstream(audio_size=AUDIO_SIZE, chunk_size=64 * 1024)
    upstream, upstream_url = await serve_fake(fake)
    servers: list[Server] = []
    try:
        speccyd = await start_server("speccyd", ["--role", "speccyd", str(data_dir), upstream_url], log)
        servers.append(speccyd)
        prepared = await prepare(speccyd.ports["port"], fake)
        blobs = LocalBlobs(bench_settings(data_dir, upstream_url).audio_dir)
        audio, v1_audio = blobs.path(prepared.file_id, "mp3"), blobs.path(prepared.v1_file_id, "mp3")
        answer = workdir / "answer.json"
        answer.write_text(json.dumps(prepared.answer))
        reference = await start_server(
            "reference", ["--role", "reference", str(audio), str(answer), str(v1_audio)], log
        )
        servers.append(reference)

        print(
            f"speccyd core benchmark on 127.0.0.1: {args.concurrency} connections, {args.rounds} alternating rounds"
            f" of {args.seconds:g} s (at most {args.cap} requests) each, {os.cpu_count()} cpus, load {_load()}"
        )
        print(f"load generator: wrk, {wrk.THREADS} thread (C; a round where it used >= 85% of its core is refused)")
        auth = prepared.auth
        json_headers = {**auth, "Content-Type": "application/json"}
        body = json.dumps(GENERATE_BODY).encode()
        v1_headers = {"Authorization": f"Bearer {V1_KEY}", "Content-Type": "application/json"}
        v1_body = json.dumps(V1_BODY).encode()
        comparisons = {
            "downloads": (
                "1 MB authenticated download (GET /files/{id}, Bearer) vs web.FileResponse",
                Case(speccyd, "GET", f"/files/{prepared.file_id}", auth),
                Case(reference, "GET", "/file", auth),
                DOWNLOAD_GOAL,
            ),
            "hits": (
                "cache-hit POST /tts/generate vs a bare handler that parses the same JSON and answers the same",
                Case(speccyd, "POST", "/tts/generate", json_headers, body),
                Case(reference, "POST", "/json", json_headers, body),
                CACHE_HIT_GOAL,
            ),
            "v1": (
                "cache-hit POST /v1/audio/speech (OpenAI key, 16 KiB) vs a bare handler that parses it, sends the file",
                Case(speccyd, "POST", "/v1/audio/speech", v1_headers, v1_body),
                Case(reference, "POST", "/speech", v1_headers, v1_body),
                CACHE_HIT_GOAL,
            ),
            "floor": (
                "cache-hit POST /tts/generate vs a bare handler that does not even parse the body (report only)",
                Case(speccyd, "POST", "/tts/generate", json_headers, body),
                Case(reference, "POST", "/answer", json_headers, body),
                None,
            ),
        }
        results = {}
        for name, (title, ours, theirs, goal) in comparisons.items():
            if args.only in (None, name):
                results[name] = await compare(title, ours, theirs, goal, args)
        if args.only is not None:
            return all(results.values())

        control = speccyd.ports["control"]
        await access_log_cost(control, comparisons["downloads"][1], comparisons["hits"][1], args)
        await lag_report(control)
        passed = all(results.values())
        print(f"\noverall: {'PASS' if passed else 'FAIL'}   ({time.monotonic() - started:.0f}s, load {_load()})")
        return passed
    except BaseException:
        print(f"\nbench stopped early; data dir and server logs kept in {workdir}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        for server in reversed(servers):
            await server.stop()
        await upstream.cleanup()
        if args.keep:
            print(f"data dir and server logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="kept-alive connections (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--cap", type=int, default=200_000, help="requests at most per measurement (default 200000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and server logs")
    parser.add_argument(
        "--only", choices=["downloads", "hits", "v1", "floor"], help="run one comparison only (for profiling)"
    )
    parser.add_argument("--role", choices=["bench", "speccyd", "reference"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "speccyd":
        asyncio.run(serve_speccyd(Path(args.role_args[0]), args.role_args[1]))
    elif args.role == "reference":
        answer = json.loads(Path(args.role_args[1]).read_text())
        asyncio.run(serve_reference(Path(args.role_args[0]), answer, Path(args.role_args[2])))
    else:
        wrk.require_wrk()
        sys.exit(0 if asyncio.run(bench(args)) else 1)


if __name__ == "__main__":
    main()
