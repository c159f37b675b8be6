"""Bonjour across a real link: a server in one network namespace, `speccyd discover` in another.

The namespaces and the veth pair joining them are created here and deleted afterwards; the 10.233.0.0/24
addresses exist only inside them. Skips (saying why) where namespaces cannot be created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.server_process import SPECCYD, ServerProcess, clean_env, settings_env

pytestmark = pytest.mark.netns

SERVER_ADDRESS = "10.233.0.1"
CLIENT_ADDRESS = "10.233.0.2"
EXTRA_ADDRESS = "10.233.0.3"
ROOT = Path(__file__).resolve().parent.parent


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _cannot_create_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"speccy-probe-{os.getpid()}"
    result = ip("netns", "add", probe)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    reason = _cannot_create_namespaces()
    if reason is not None:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    server_ns, client_ns = f"speccy-srv-{tag}", f"speccy-cli-{tag}"
    veth_server, veth_client = f"vs{tag}", f"vc{tag}"
    try:
        steps = [
            ("netns", "add", server_ns),
            ("netns", "add", client_ns),
            ("link", "add", veth_server, "type", "veth", "peer", "name", veth_client),
            ("link", "set", veth_server, "netns", server_ns),
            ("link", "set", veth_client, "netns", client_ns),
            ("-n", server_ns, "addr", "add", f"{SERVER_ADDRESS}/24", "dev", veth_server),
            ("-n", client_ns, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", veth_client),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", client_ns, "link", "set", "lo", "up"),
            ("-n", server_ns, "link", "set", veth_server, "up"),
            ("-n", client_ns, "link", "set", veth_client, "up"),
        ]
        for step in steps:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"cannot set up the namespaces (`ip {' '.join(step)}`: {result.stderr.strip()})")
        yield server_ns, client_ns
    finally:
        # Deleting a namespace deletes the veth end inside it, and with it the peer.
        ip("netns", "del", server_ns)
        ip("netns", "del", client_ns)


def discover_in(namespace: str, name: str, data_dir: Path) -> list[dict[str, object]]:
    """`speccyd discover --json` run inside `namespace`: the entries named `name`."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, str(SPECCYD), "discover", "--json", "--timeout", "2",
         "--data-dir", str(data_dir)],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: list[dict[str, object]] = json.loads(result.stdout)
    return [s for s in found if s["name"] == name]


def discover_until(
    namespace: str, name: str, data_dir: Path, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Browse until `name` is found in the state `wanted`; a lost multicast packet costs one more window."""
    seen: list[dict[str, object]] = []
    for _ in range(3):
        seen = discover_in(namespace, name, data_dir)
        if seen and wanted(seen[0]):
            return seen[0]
    raise AssertionError(f"{name} not found as wanted; last seen: {seen}")


async def test_discover_finds_server_in_another_namespace(namespaces: tuple[str, str], tmp_path: Path) -> None:
    """`speccyd discover` in one namespace finds a server announcing on all interfaces of another."""
    server_ns, client_ns = namespaces
    name = f"netns-{uuid.uuid4().hex[:8]}"
    # The default mdns_interfaces ("all"): inside the namespace that is its veth end and nothing else.
    server = ServerProcess(
        tmp_path / "server", "http://127.0.0.1:9/v1", tmp_path / "server.log",
        env=settings_env(mdns="on", name=name), host="0.0.0.0", executable=[str(SPECCYD)],
        prefix=["ip", "netns", "exec", server_ns],
    )  # fmt: skip
    async with server:
        await server.start()

        # Registered (about 1.5 s after it listens): from now on it answers the browser's first query.
        await eventually(lambda: "announcing" in server.log, what="the mDNS registration")
        found = discover_until(client_ns, name, tmp_path / "client", lambda s: True)
        assert found["addresses"] == [SERVER_ADDRESS]
        assert found["port"] == server.port
        assert found["tls"] is False
        assert await server.stop() == 0


async def test_announcement_follows_a_new_address(namespaces: tuple[str, str], tmp_path: Path) -> None:
    """When the host gains an address, the announcer re-announces and a browser sees the new address."""
    server_ns, client_ns = namespaces
    name = f"netns-{uuid.uuid4().hex[:8]}"
    argv = ["ip", "netns", "exec", server_ns, sys.executable, "-m", "tests.netns_announcer", name, "8420"]
    announcer = ServerProcess.command(argv, tmp_path / "announcer.log", env=clean_env(), ready="announcing", cwd=ROOT)
    async with announcer:
        await announcer.start()
        found = discover_until(client_ns, name, tmp_path, lambda s: s["addresses"] == [SERVER_ADDRESS])
        veth = ip("-n", server_ns, "-o", "link", "show", "type", "veth").stdout.split(":")[1].strip().split("@")[0]
        assert ip("-n", server_ns, "addr", "add", f"{EXTRA_ADDRESS}/24", "dev", veth).returncode == 0

        await eventually(lambda: "addresses changed" in announcer.log, what="the announcer to notice the new address")
        found = discover_until(
            client_ns, name, tmp_path, lambda s: sorted(s["addresses"]) == [SERVER_ADDRESS, EXTRA_ADDRESS]
        )
        assert found["port"] == 8420
        assert await announcer.stop() == 0
