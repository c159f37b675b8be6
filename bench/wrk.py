"""wrk (the C HTTP load generator, Debian's `wrk`) driven from Python: one bounded load, and what it cost.

wrk keeps connections alive and spends a few microseconds per request, so on a 2-core machine the server
under test, not the client, is the limit; `Load.client_bound` says when that is not so (the client used
most of its core), and the benchmarks refuse such a figure rather than report it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# wrk runs one thread: one core for the client, one for the server, on the 2-core machines we measure on.
THREADS = 1
# A client past this share of its core may be what limits the rate.
CLIENT_BOUND = 0.85


class WrkMissing(SystemExit):
    pass


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    rate: float  # requests per second
    bad: int  # non-2xx responses plus socket errors
    server_cpu: float  # cores the server used on average (1.0 = one core busy all the time)
    client_cpu: float

    @property
    def server_us_per_request(self) -> float:
        return self.server_cpu * self.seconds / max(1, self.requests) * 1e6

    @property
    def client_bound(self) -> bool:
        return self.client_cpu >= CLIENT_BOUND * THREADS


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed (Debian: apt-get install -y wrk); the benchmarks need it")
    return path


def _process_cpu(pid: int) -> float:
    """User + system seconds a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _script(method: str, headers: dict[str, str], body: bytes, cap: int) -> str:
    """The request, and a stop after `cap` responses: every load is bounded by count as well as time."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body:
        lines.append(f"wrk.body = {json.dumps(body.decode())}")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines += [
        "local seen = 0",
        "function response(status, headers, body)",
        "  seen = seen + 1",
        f"  if seen >= {cap} then wrk.thread:stop() end",
        "end",
    ]
    return "\n".join(lines) + "\n"


def run(
    url: str,
    *,
    server_pid: int,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    connections: int = 16,
    seconds: float = 5.0,
    cap: int = 100_000,
) -> Load:
    """One load of at most `seconds` and `cap` responses against `url`, with both processes' CPU."""
    wrk = require_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_script(method, headers or {}, body, cap))
        script = f.name
    try:
        before = _process_cpu(server_pid)
        process = subprocess.Popen(
            [wrk, f"-t{THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", script, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _, status, usage = os.wait4(process.pid, 0)
        assert process.stdout is not None
        out = process.stdout.read()
        server = _process_cpu(server_pid) - before
    finally:
        os.unlink(script)
    if status != 0:
        raise SystemExit(f"wrk failed ({status}): {out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if done is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    took = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
    requests = int(done.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = (sum(int(g) for g in errors.groups()) if errors else 0) + (int(non_2xx.group(1)) if non_2xx else 0)
    client = usage.ru_utime + usage.ru_stime
    return Load(requests, took, requests / took, bad, server / took, client / took)
