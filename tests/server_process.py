"""The real `speccyd serve` as a subprocess: start it, find its port, kill it, read its log."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


def speccyd_env(upstream_url: str, **extra: str) -> dict[str, str]:
    """The process environment: nothing of the machine's SPECCY_/OPENAI_ settings leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPECCY_", "OPENAI_"))}
    env.update(
        SPECCY_OPENAI_BASE_URL=upstream_url,
        SPECCY_MDNS="off",
        SPECCY_RETRY_BACKOFF="10ms",
        SPECCY_RATE_LIMIT="off",
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


class ServerProcess:
    """One run of the server; its stderr is appended to `log_path` so a whole test's log can be grepped."""

    def __init__(
        self,
        data_dir: Path,
        upstream_url: str,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.upstream_url = upstream_url
        self.log_path = log_path
        self.env = env or {}
        self.prefix = list(prefix)
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ServerProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Whatever happened in the test, no server outlives it."""
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self.proc is not None
        return self.proc

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def start(self, timeout: float = 20.0) -> None:
        env = speccyd_env(self.upstream_url, **self.env)
        argv = [sys.executable, "-m", "speccyd", "serve", "--data-dir", str(self.data_dir)]
        argv += ["--host", "127.0.0.1", "--port", "0"]
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix, *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._read_log(found))
        try:
            self.port = await asyncio.wait_for(asyncio.shield(found), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"server did not start in {timeout}s; log:\n{self.log_path.read_text()}") from None

    async def _read_log(self, found: asyncio.Future[int]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.log_path.open("ab") as log:
            async for line in self.proc.stderr:
                log.write(line)
                log.flush()
                match = _LISTENING.search(line)
                if match and not found.done():
                    found.set_result(int(match.group(1)))
        if not found.done():
            found.set_exception(AssertionError(f"server exited before listening:\n{self.log_path.read_text()}"))

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await self.proc.wait()
        if self._pump is not None:
            await self._pump
        return code

    def path(self, inside: Path) -> Path:
        """`inside` as the server sees it: through /proc when it runs in its own mount namespace."""
        if not self.prefix:
            return inside
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root") / inside.relative_to("/")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send `sig` and wait (bounded) for the exit code."""
        return await asyncio.wait_for(self.kill(sig), timeout)


async def start_server(data_dir: Path, upstream_url: str, log_path: Path, **env: str) -> ServerProcess:
    """A started `speccyd serve` on 127.0.0.1 with a free port; `env` adds SPECCY_ settings."""
    server = ServerProcess(data_dir, upstream_url, log_path, env=env)
    await server.start()
    return server
