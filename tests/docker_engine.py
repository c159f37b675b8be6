"""A private Docker engine for tests, and a base image made from Debian's packages (no registry is reachable).

The engine is its own `dockerd`: its own data root, exec root, pid file, config file and unix socket in a tmp
dir, no bridge, no iptables rules, no IP forwarding, so it changes nothing on the machine and containers can only
use `--network host`. The base image is Debian of the host's release from the host's apt sources, bootstrapped
by mmdebstrap and cached under .cache/docker/ by a hash of everything that goes into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "docker"
# What the Dockerfile needs of a base: python3 (3.11 on bookworm) with venv, and CAs for HTTPS to OpenAI.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# As Debian's slim images do: no manuals, docs or translations (about 30 MB).
SLIM = [
    f"--dpkgopt={rule}"
    for rule in (
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
    )
]


class Unavailable(Exception):
    """The engine cannot run here; the message says why (the test skips with it)."""


@dataclass
class Docker:
    """A docker CLI bound to one engine (DOCKER_HOST) and a config dir of its own (no user credentials)."""

    client: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    async def arun(self, *args: str, timeout: float = 60, check: bool = True) -> tuple[int, str]:
        """Like `run` without blocking the event loop (the fake upstream answers the container from it)."""
        proc = await asyncio.create_subprocess_exec(
            self.client, *args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"docker {' '.join(args)} did not finish within {timeout}s") from None
        text = out.decode(errors="replace")
        assert proc.returncode is not None
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {proc.returncode}\n{text}")
        return proc.returncode, text

    async def state(self, container: str) -> dict[str, Any]:
        _, out = await self.arun("inspect", "--format", "{{json .State}}", container)
        state: dict[str, Any] = json.loads(out)
        return state


def _clients() -> list[str]:
    """Every `docker` on PATH, first one first."""
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory) / "docker"
        if path.is_file() and os.access(path, os.X_OK) and str(path.resolve()) not in map(_resolved, found):
            found.append(str(path))
    return found


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def buildkit_client() -> str:
    """A docker CLI that builds with BuildKit (RUN --mount=type=secret): one with the buildx plugin, or one from
    before Docker 23, whose BuildKit is built in (Debian's docker.io). A newer CLI without buildx falls back to
    the legacy builder, which cannot mount secrets.
    """
    for client in _clients():
        env = {"PATH": os.environ.get("PATH", ""), "DOCKER_CONFIG": "/nonexistent"}
        if subprocess.run([client, "buildx", "version"], env=env, capture_output=True, timeout=30).returncode == 0:
            return client
        version = subprocess.run([client, "--version"], env=env, capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"version (\d+)\.", version)
        if match and int(match.group(1)) < 23:
            return client
    raise Unavailable("no docker CLI that builds with BuildKit (Debian: apt-get install docker.io)")


class Engine:
    """`dockerd` as a child process; `docker` talks to it. Stop it with `stop()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.docker: Docker

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60) -> Docker:
        if os.geteuid() != 0:
            raise Unavailable(f"dockerd needs root (running as uid {os.geteuid()})")
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise Unavailable("dockerd not installed (Debian: apt-get install docker.io)")
        cgroups = Path("/sys/fs/cgroup")
        if not cgroups.is_dir() or not any(cgroups.iterdir()):
            raise Unavailable("no cgroup filesystem at /sys/fs/cgroup: containers cannot be confined here")
        client = buildkit_client()
        d = self.directory
        socket = d / "docker.sock"
        (d / "daemon.json").write_text("{}")  # not the host's /etc/docker/daemon.json
        (d / "client").mkdir(exist_ok=True)
        argv = [
            dockerd, f"--host=unix://{socket}", f"--data-root={d / 'root'}", f"--exec-root={d / 'exec'}",
            f"--pidfile={d / 'dockerd.pid'}", f"--config-file={d / 'daemon.json'}",
            # No docker0, no NAT rules, no change to the host's ip_forward: containers use --network host only.
            "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            # Our own namespaces, should a system containerd be running (dockerd would then use it).
            "--containerd-namespace=speccyd-test", "--containerd-plugins-namespace=speccyd-test-plugins",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=f"unix://{socket}", DOCKER_CONFIG=str(d / "client"), DOCKER_BUILDKIT="1")
        self.docker = Docker(client, env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"dockerd exited with {self.proc.returncode}: {self._log_tail()}")
            if socket.exists() and self.docker.run("version", check=False, timeout=10).returncode == 0:
                return self.docker
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"dockerd did not answer within {timeout}s: {self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        lines = [line for line in self.log.splitlines() if "level=error" in line or "level=fatal" in line]
        return " | ".join((lines or self.log.splitlines())[-3:]) or "(no output)"

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (dockerd stops its containers and its containerd), SIGKILL past `timeout`; then its files go."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                containerd_pid = self.directory / "exec" / "containerd" / "containerd.pid"
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(containerd_pid.read_text()), signal.SIGKILL)
        # dockerd leaves its network namespace mounted in the exec root (and a killed one, its layers): unmount
        # whatever is left under our dir, deepest first, so that nothing of it outlives the session.
        mine = str(self.directory) + "/"
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((p for p in points if p.startswith(mine)), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)
        # Layers are hundreds of MB: not left behind in pytest's kept tmp dirs.
        for name in ("root", "exec"):
            shutil.rmtree(self.directory / name, ignore_errors=True)


def host_ca_bundle() -> str | None:
    """The CA bundle this machine's pip trusts: behind a TLS-inspecting proxy it holds the proxy's CA too."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _apt_sources(suite: str) -> list[Path]:
    """The host's apt source files for `suite` (and its -updates/-security), to bootstrap from the same mirror."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    entry = re.compile(rf"(^|\s){re.escape(suite)}(-updates|-security)?(\s|$)", re.MULTILINE)
    return [f for f in files if f.suffix in (".list", ".sources") and f.is_file() and entry.search(f.read_text())]


def debian_base(docker: Docker) -> tuple[str, float]:
    """A Debian image with python3 for the Dockerfile's BASE (its tag), and the seconds it took to get it."""
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise Unavailable("mmdebstrap not installed (Debian: apt-get install mmdebstrap); it makes the base image")
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    suite = release.get("VERSION_CODENAME", "").strip('"')
    sources = _apt_sources(suite) if suite else []
    if not sources:
        raise Unavailable(f"no apt sources for the host's release {suite!r}: the base image needs a Debian host")
    started = time.monotonic()
    version = subprocess.run([mmdebstrap, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(f"{version} {suite} {BASE_PACKAGES} {SLIM}".encode())
    for source in sources:
        digest.update(source.read_bytes())
    key = digest.hexdigest()[:16]
    tarball = CACHE / f"base-{key}.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob("base-*.tar*"):  # bases of earlier inputs: about 180 MB each
            old.unlink()
        partial = tarball.with_suffix(".tar.part")
        result = subprocess.run(
            [mmdebstrap, "--variant=apt", f"--include={','.join(BASE_PACKAGES)}", *SLIM, "--quiet", "--format=tar",
             suite, str(partial), *map(str, sources)],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-4000:]}"
        partial.rename(tarball)
    tag = f"speccyd-test-base:{key}"
    docker.run("import", str(tarball), tag, timeout=300)
    return tag, time.monotonic() - started


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the container binds it a moment later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
