"""Reports never stall requests: another user's status request while two clients loop on reports.

    .venv/bin/python -m bench.reports [--rows 1000000] [--duration 15] [--connections 4]

A real `speccyd serve` (metrics on, default settings otherwise) on loopback, the fake upstream in this
process, and wrk (Debian: apt-get install wrk), a C load generator, for every request rate and latency.

1. Two users sign in; the measured user ("alice") has one ready file. The server stops.
2. `--rows` usage rows are seeded straight into the database (one executemany in one transaction, not through
   the HTTP API): 48 users, 30 days, every kind. The server starts again; its first cleanup rolls the rows from
   before yesterday up into days (timed); the bench waits for it.
3. Baseline: wrk on alice's `GET /tts/{hash}/status` for `--duration` seconds, nothing else running.
4. With reports: the same, while two more wrk clients loop, one connection each, on bob's `GET /user/usage`
   and on `GET /metrics`; and `speccyd usage --json` is timed once meanwhile.

Pass: p99 with reports <= 2 x the baseline p99, and <= 50 ms. Exit status 0 = pass, 1 = fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.fake_upstream import FakeUpstream, serve_fake

HOST = "127.0.0.1"
DAY = 86400
_LISTENING = re.compile(r"listening on http://[^\s:]+:(\d+)")


def server_env(upstream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPECCY_", "OPENAI_"))}
    # log_level stays at its default (info): the access log is part of what production pays per request.
    env.update(SPECCY_OPENAI_BASE_URL=upstream, SPECCY_MDNS="off", SPECCY_RATE_LIMIT="off", SPECCY_METRICS="on")
    return env


class Server:
    def __init__(self, data_dir: Path, upstream: str, log: Path) -> None:
        self.data_dir, self.upstream, self.log = data_dir, upstream, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "speccyd", "serve", "--data-dir", str(self.data_dir), "--host", HOST,
                 "--port", "0"],
                env=server_env(self.upstream), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log.read_text(errors="replace")[offset:])
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"speccyd exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        raise SystemExit("speccyd did not start within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


async def prepare(server: Server) -> tuple[dict[str, str], dict[str, str], str]:
    """Sign alice and bob in; alice gets one ready file. (alice's headers, bob's headers, alice's hash)."""
    async with aiohttp.ClientSession(base_url=server.url) as http:
        tokens = []
        for key in ("sk-test-alice", "sk-test-bob"):
            async with http.post("/auth/verify", json={"openai_token": key}) as r:
                tokens.append({"Authorization": f"Bearer {(await r.json())['session_token']}"})
        async with http.post("/tts/generate", json={"text": "Is it ready?"}, headers=tokens[0]) as r:
            content_hash = (await r.json())["content_hash"]
        for _ in range(500):
            async with http.get(f"/tts/{content_hash}/status", headers=tokens[0]) as r:
                if (await r.json())["status"] == "ready":
                    return tokens[0], tokens[1], content_hash
            await asyncio.sleep(0.02)
    raise SystemExit("alice's file never became ready")


def seed(db_path: Path, rows: int) -> float:
    """`rows` usage rows over the last 30 days for 48 users plus bob; the seconds it took."""
    started = time.perf_counter()
    db = sqlite3.connect(db_path, isolation_level=None)
    now = time.time()
    bob = db.execute("SELECT id FROM users ORDER BY created_at LIMIT 1 OFFSET 1").fetchone()[0]
    users = [uuid.uuid4().hex for _ in range(48)]
    rng = random.Random(1)
    # Choices drawn in bulk: a million calls into `random` one at a time would take longer than the inserts.
    who = rng.choices([*users, bob], k=rows)
    what = rng.choices(("generated", "cache_hit", "cache_hit", "failed"), k=rows)
    which = rng.choices(("tts-1", "tts-1-hd", "gpt-4o-mini-tts"), k=rows)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO users (id, key_hash, key_enc, created_at, last_seen) VALUES (?, ?, x'00', ?, ?)",
        [(u, uuid.uuid4().hex, now - 30 * DAY, now) for u in users],
    )
    db.executemany(
        "INSERT INTO usage_log (user_id, at, kind, model, characters) VALUES (?, ?, ?, ?, ?)",
        ((who[n], now - (n * 7919 % rows) / rows * 30 * DAY, what[n], which[n], 10 + n % 3990) for n in range(rows)),
    )
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - started


def raw_rows(db_path: Path) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM usage_log").fetchone()[0])
    finally:
        db.close()


@dataclass
class Wrk:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk_command(url: str, headers: dict[str, str], connections: int, duration: float) -> list[str]:
    header_args = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    return ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", *header_args, url]


def parse_wrk(output: str) -> Wrk:
    requests = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", output)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.M))
    if requests is None or set(latency) != {"50", "99"}:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    seconds = float(requests.group(2)) / (1000 if requests.group(3) == "ms" else 1)
    errors = " ".join(line.strip() for line in output.splitlines() if "Non-2xx" in line or "Socket errors" in line)
    return Wrk(int(requests.group(1)), seconds, _ms(latency["50"]), _ms(latency["99"]), errors)


def run_wrk(url: str, headers: dict[str, str], connections: int, duration: float) -> Wrk:
    done = subprocess.run(wrk_command(url, headers, connections, duration), capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def line(name: str, w: Wrk) -> str:
    errors = f"  ({w.errors})" if w.errors else ""
    return f"  {name:<34} {w.rate:8.0f} req/s   p50 {w.p50_ms:7.2f} ms   p99 {w.p99_ms:7.2f} ms{errors}"


async def measure(args: argparse.Namespace, root: Path) -> bool:
    fake = FakeUpstream()
    runner, upstream = await serve_fake(fake, HOST)
    server = Server(root / "data", upstream, root / "server.log")
    try:
        server.start()
        alice, bob, content_hash = await prepare(server)
        server.stop()
        seconds = seed(server.data_dir / "speccyd.db", args.rows)
        print(f"seeded {args.rows:,} usage rows in {seconds:.1f}s (one transaction)")
        started = time.perf_counter()
        server.start()
        # The first cleanup pass (at start) rolls everything from before yesterday up into days.
        previous, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 1.0:
            count = await asyncio.to_thread(raw_rows, server.data_dir / "speccyd.db")
            if count != previous:
                previous, stable_since = count, time.monotonic()
            await asyncio.sleep(0.1)
        print(f"start and roll-up: {time.perf_counter() - started - 1.0:.1f}s; {previous:,} raw rows left "
              f"(today and yesterday), the rest in daily rows")  # fmt: skip
        status = f"{server.url}/tts/{content_hash}/status"
        run_wrk(status, alice, args.connections, 2)  # warm-up
        baseline = await asyncio.to_thread(run_wrk, status, alice, args.connections, args.duration)

        async def cli_usage() -> float:
            await asyncio.sleep(args.duration / 3)
            began = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "speccyd", "usage", "--json", "--data-dir", str(server.data_dir),
                stdout=asyncio.subprocess.DEVNULL, env=server_env(upstream),
            )  # fmt: skip
            await proc.wait()
            return time.perf_counter() - began

        loaded, usage, metrics, cli = await asyncio.gather(
            asyncio.to_thread(run_wrk, status, alice, args.connections, args.duration),
            asyncio.to_thread(run_wrk, f"{server.url}/user/usage", bob, 1, args.duration),
            asyncio.to_thread(run_wrk, f"{server.url}/metrics", {}, 1, args.duration),
            cli_usage(),
        )
    finally:
        server.stop()
        await runner.cleanup()
    ratio = loaded.p99_ms / baseline.p99_ms
    ok = ratio <= 2.0 and loaded.p99_ms <= 50.0
    print(f"alice's GET /tts/{{hash}}/status, {args.connections} connections, {args.duration:g}s each:")
    print(line("no reports", baseline))
    print(line("two clients looping on reports", loaded))
    print(line("  bob's GET /user/usage, 1 conn", usage))
    print(line("  GET /metrics, 1 conn", metrics))
    print(f"  speccyd usage --json (whole process, meanwhile): {cli:.2f}s")
    print(
        f"p99 ratio {ratio:.2f}x (goal <= 2x), p99 {loaded.p99_ms:.1f} ms (goal <= 50 ms): {'PASS' if ok else 'FAIL'}"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections for the status requests")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and server.log")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    args.rows = min(args.rows, 5_000_000)
    args.duration = min(args.duration, 120.0)
    root = Path(tempfile.mkdtemp(prefix="speccyd-bench-reports-"))
    try:
        ok = asyncio.run(measure(args, root))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
