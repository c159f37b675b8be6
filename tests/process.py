"""Running the real `speccyd` executable: a clean environment, its log in a file, and its bound port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import eventually

SPECCYD = Path(sys.executable).with_name("speccyd")
_LISTENING = re.compile(r"listening on (https?)://([^\s:]+):(\d+)")


def clean_env(**settings: object) -> dict[str, str]:
    """This process's environment without any SPECCY_/OPENAI_ variable, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPECCY_", "OPENAI_"))}
    env.update({f"SPECCY_{key.upper()}": str(value) for key, value in settings.items()})
    return env


class ServerProcess:
    """`speccyd serve` as a child process; `url` is known once it logs the port it bound."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout: float = 30.0, ready: re.Pattern[str] = _LISTENING) -> ServerProcess:
        """Start, and wait until the log matches `ready` (by default: the line naming the bound port)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)

        async def started() -> re.Match[str] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.log}")
            return ready.search(self.log)

        match = await eventually(started, timeout=timeout, what=f"{ready.pattern!r} in the log")
        if ready is _LISTENING:
            self.url = f"{match.group(1)}://{match.group(2)}:{match.group(3)}"
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (killed and failed if it does not stop within `timeout`)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            assert self.proc is not None
            return self.proc.poll() is not None

        try:
            await eventually(exited, timeout=timeout, what="speccyd to exit after SIGTERM")
        except AssertionError:
            self.proc.kill()
            self.proc.wait()
            raise
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
