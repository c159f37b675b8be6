"""The real `speccyd` as a child process: a clean environment, its output in a log file, its bound URL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import eventually

# The installed console script, for tests that run `speccyd` exactly as a user would.
SPECCYD = Path(sys.executable).with_name("speccyd")
_PYTHON_SPECCYD = (sys.executable, "-m", "speccyd")
_LISTENING = re.compile(r"listening on (https?)://([^\s:]+):(\d+)")


def listening_socket(host: str = "127.0.0.1", backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on a free port, held by the test the way systemd holds a socket unit's."""
    return socket.create_server((host, 0), backlog=backlog)


# What systemd does between fork and exec of a socket-activated service: the socket moved to fd 3, and
# LISTEN_PID set to the process's own pid (exec keeps it).
_ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def activation_prefix(fd: int) -> list[str]:
    """A command prefix that execs the rest as systemd starts a socket-activated service with `fd`."""
    return [sys.executable, "-c", _ACTIVATE, str(fd)]


def settings_env(**settings: object) -> dict[str, str]:
    """The SPECCY_<KEY> variables that set the given settings."""
    return {f"SPECCY_{key.upper()}": str(value) for key, value in settings.items()}


# mDNS on, but bound to loopback: tests never multicast on the machine's real interfaces.
LOOPBACK_MDNS = settings_env(mdns="on", mdns_interfaces="127.0.0.1")


def clean_env(**settings: object) -> dict[str, str]:
    """This process's environment without any SPECCY_/OPENAI_ variable, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPECCY_", "OPENAI_"))}
    env.update(settings_env(**settings))
    return env


def speccyd_env(upstream_url: str = "http://127.0.0.1:9/v1", **extra: str) -> dict[str, str]:
    """A clean environment with the test defaults (fake upstream, no mDNS, fast retries); `extra` variables win."""
    env = clean_env(openai_base_url=upstream_url, mdns="off", retry_backoff="10ms", rate_limit="off")
    env.update(extra)
    return env


def run_cli(
    *args: str, data_dir: Path | None, upstream_url: str = "http://127.0.0.1:9/v1", input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `speccyd ARGS [--data-dir D]` to completion and capture its output."""
    data_args = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [*_PYTHON_SPECCYD, *args, *data_args],
        env=speccyd_env(upstream_url),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class ServerProcess:
    """`speccyd serve` as a child process; its output is appended to `log_path` so a test's whole log can be read.

    `env` adds variables to the test environment (`speccyd_env`), `executable` replaces `python -m speccyd`
    (the binary, the console script), `prefix` wraps the command (`ip netns exec NS`, `unshare -m ...`), and
    `args` follow `serve`. `url` and `port` are known once the server logs the address it bound.
    """

    def __init__(
        self,
        data_dir: Path,
        upstream_url: str,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        executable: Sequence[str] = _PYTHON_SPECCYD,
        prefix: Sequence[str] = (),
        args: Sequence[str] = (),
        listen: socket.socket | None = None,
    ) -> None:
        serve = [*executable, "serve", "--data-dir", str(data_dir), "--host", host, "--port", "0", *args]
        self.env = speccyd_env(upstream_url, **(env or {}))
        self.pass_fds: tuple[int, ...] = ()
        if listen is not None:
            # As systemd starts a socket-activated service: the socket at fd 3, LISTEN_PID naming the process.
            serve = [*activation_prefix(listen.fileno()), *serve]
            self.env.update(LISTEN_FDS="1", LISTEN_FDNAMES="speccyd.socket")
            self.pass_fds = (listen.fileno(),)
        self.argv = [*prefix, *serve]
        self.log_path = log_path
        self.prefix = list(prefix)
        self.cwd: Path | None = None
        self.ready = _LISTENING
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    @classmethod
    def command(
        cls, argv: Sequence[str], log_path: Path, *, env: dict[str, str], ready: str, cwd: Path | None = None
    ) -> ServerProcess:
        """Any long-running command (a helper announcer, say), ready once its log contains `ready`."""
        process = cls.__new__(cls)
        process.argv, process.env, process.log_path, process.prefix = list(argv), env, log_path, []
        process.pass_fds = ()
        process.cwd, process.ready, process.proc, process.url = cwd, re.compile(re.escape(ready)), None, ""
        return process

    async def __aenter__(self) -> ServerProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Whatever happened in the test, no server outlives it."""
        await self.kill()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self.proc is not None
        return self.proc

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def spawn(self) -> int:
        """Start the process without waiting for anything; the log offset where this run's output begins."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
            )  # fmt: skip
        return offset

    async def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start, and wait until the log of this run shows it is ready (by default: the line naming its port)."""
        offset = await self.spawn()

        async def started() -> re.Match[str] | None:
            if self.process.returncode is not None:
                raise AssertionError(f"{self.argv[0]} exited with {self.process.returncode}:\n{self.log}")
            return self.ready.search(self.log[offset:])

        try:
            match = await eventually(started, timeout=timeout, what=f"{self.ready.pattern!r} in the log")
        except AssertionError as error:
            await self.kill()
            raise AssertionError(f"{error}; log:\n{self.log}") from None
        if self.ready is _LISTENING:
            self.url = f"{match.group(1)}://{match.group(2)}:{match.group(3)}"
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig`, then the exit code; killed, and the test failed, if it does not exit within `timeout`."""
        proc = self.process
        if proc.returncode is None:
            proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{self.argv[0]} did not exit within {timeout}s of signal {sig}") from None

    async def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Like `stop`, SIGKILL by default; nothing to do (None) if it never started."""
        return None if self.proc is None else await self.stop(sig)

    def path(self, inside: Path) -> Path:
        """`inside` as the server sees it: through /proc when it runs in its own mount namespace."""
        if not self.prefix:
            return inside
        return Path(f"/proc/{self.process.pid}/root") / inside.relative_to("/")


async def start_server(data_dir: Path, upstream_url: str, log_path: Path, **env: str) -> ServerProcess:
    """A started `speccyd serve` on 127.0.0.1 with a free port; `env` adds SPECCY_ variables."""
    return await ServerProcess(data_dir, upstream_url, log_path, env=env).start()
