"""The real `speccyd serve` as a subprocess: started on 127.0.0.1 with a free port, its log in a file."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def speccyd_env(upstream_url: str, **extra: str) -> dict[str, str]:
    """The process environment: nothing of the machine's SPECCY_/OPENAI_ settings leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPECCY_", "OPENAI_"))}
    env.update(
        SPECCY_OPENAI_BASE_URL=upstream_url,
        SPECCY_MDNS="off",
        SPECCY_RETRY_BACKOFF="10ms",
        SPECCY_RATE_LIMIT="off",
        SPECCY_HOST="127.0.0.1",
        SPECCY_PORT="0",
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, data_dir: Path | None, upstream_url: str = "http://127.0.0.1:9/v1", input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `speccyd ARGS [--data-dir D]` to completion and capture its output."""
    data_args = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "speccyd", *args, *data_args],
        env=speccyd_env(upstream_url),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    log_path: Path
    url: str

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)


async def start_server(data_dir: Path, upstream_url: str, log_path: Path, **env: str) -> ServerProcess:
    """Start `speccyd serve` and wait (with a deadline) for the line that names its port."""
    log = log_path.open("ab")
    start = log_path.stat().st_size
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "speccyd", "serve", "--data-dir", str(data_dir),
        env=speccyd_env(upstream_url, **env), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text()[start:])
        if match:
            return ServerProcess(process, log_path, f"http://127.0.0.1:{match.group(1)}")
        if process.returncode is not None:
            break
        await asyncio.sleep(0.02)
    process.kill()
    await process.wait()
    raise AssertionError(f"speccyd serve did not start:\n{log_path.read_text()[start:]}")
