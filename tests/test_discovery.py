"""Bonjour: the `_speccy._tcp` announcement, its TXT record, goodbyes, name conflicts and `speccyd discover`.

Every announcement and browse here is bound to 127.0.0.1 (zeroconf `interfaces=["127.0.0.1"]`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from speccyd import __version__
from speccyd.appkeys import ANNOUNCER, DATABASE
from speccyd.cli import app
from speccyd.ops.discovery import Announcer, txt_record
from tests.conftest import AppClient
from tests.mdns import Browser
from tests.server_process import LOOPBACK_MDNS, SPECCYD, ServerProcess, clean_env


def unique_name(prefix: str = "speccy-test") -> str:
    # A fresh name per test, so a record cached from an earlier test can never answer for this one.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def announced(client: AppClient) -> Announcer:
    announcer = client.app[ANNOUNCER]
    announcer.start(client.port)  # what `speccyd serve` does once its site is bound
    await asyncio.wait_for(announcer.registered.wait(), 15)
    return announcer


def test_txt_record_has_no_host_or_port() -> None:
    """TXT carries txtvers, id, version, api, path and tls (+ fp with TLS); host and port live in SRV/A."""
    assert txt_record("abc", None) == {
        "txtvers": "1", "id": "abc", "version": __version__, "api": "1", "path": "/", "tls": "0",
    }  # fmt: skip
    assert txt_record("abc", "ff" * 32)["fp"] == "ff" * 32
    assert txt_record("abc", "ff" * 32)["tls"] == "1"


async def test_announces_bound_port_and_txt(make_client: Callable[..., Awaitable[AppClient]]) -> None:
    """A serving app is found under its `name` with the bound port, its 127.0.0.1 address and the TXT keys."""
    name = unique_name()
    client = await make_client(mdns="on", mdns_interfaces="127.0.0.1", name=name)
    server_id = await client.app[DATABASE].server_id()
    async with Browser() as browser:
        await announced(client)
        info = await browser.wait_for(name)
    assert info.port == client.port
    assert info.parsed_addresses() == ["127.0.0.1"]
    assert info.decoded_properties == {
        "txtvers": "1", "id": server_id, "version": __version__, "api": "1", "path": "/", "tls": "0",
    }  # fmt: skip


async def test_server_id_is_stable_across_restarts(make_client: Callable[..., Awaitable[AppClient]]) -> None:
    """The `id` in TXT is created once with the database and is the same after a restart."""
    first = await make_client()
    server_id = await first.app[DATABASE].server_id()
    await first.close()
    second = await make_client()
    assert await second.app[DATABASE].server_id() == server_id
    assert uuid.UUID(server_id)


async def test_name_conflict_renames_the_second_server(make_client: Callable[..., Awaitable[AppClient]]) -> None:
    """Two servers with one name both get announced: the second one as `name-2`, as Bonjour does."""
    name = unique_name("kitchen")
    first = await make_client(mdns="on", mdns_interfaces="127.0.0.1", name=name)
    async with Browser() as browser:
        a = await announced(first)
        await browser.wait_for(name)
        # A second server with its own data dir would be a second process; here a second app suffices.
        second = await make_client(mdns="on", mdns_interfaces="127.0.0.1", name=name, port=0)
        b = await announced(second)
        info = await browser.wait_for(f"{name}-2")
    assert a.instance_name == name
    assert b.instance_name == f"{name}-2"
    assert info.port == second.port


async def test_sigterm_sends_goodbye(tmp_path: Path, upstream_url: str) -> None:
    """After SIGTERM a browser loses the server at once (goodbye, TTL 0), not when its records expire minutes later."""
    name = unique_name()
    env = {**LOOPBACK_MDNS, "SPECCY_NAME": name}
    server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", env=env)
    async with server, Browser() as browser:
        await server.start()
        info = await browser.wait_for(name)
        assert info.port == server.port
        assert await server.stop() == 0
        await browser.wait_gone(name, timeout=5)
    assert "announcing" in server.log


async def test_mdns_off_announces_nothing(make_client: Callable[..., Awaitable[AppClient]]) -> None:
    """With `mdns = off` there is no announcer at all."""
    client = await make_client(mdns="off")
    assert ANNOUNCER not in client.app


async def discover(*args: str, data_dir: Path) -> str:
    """`speccyd discover ARGS` on loopback (mdns_interfaces from the environment); its stdout."""
    env = clean_env(mdns_interfaces="127.0.0.1")
    env["COLUMNS"] = "200"  # a table row per server, unwrapped
    proc = await asyncio.create_subprocess_exec(
        str(SPECCYD), "discover", "--timeout", "2", *args, "--data-dir", str(data_dir),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_discover_lists_servers(make_client: Callable[..., Awaitable[AppClient]], tmp_path: Path) -> None:
    """`speccyd discover` (on its config's mdns_interfaces) lists name, addresses, port, version, as JSON or table."""
    name = unique_name()
    client = await make_client(mdns="on", mdns_interfaces="127.0.0.1", name=name)
    await announced(client)
    as_json, table = await asyncio.gather(
        discover("--json", data_dir=tmp_path / "empty"), discover(data_dir=tmp_path / "empty")
    )
    servers = {s["name"]: s for s in json.loads(as_json)}
    assert servers[name] == {
        "name": name, "addresses": ["127.0.0.1"], "port": client.port, "version": __version__, "tls": False,
        "fingerprint": None, "id": await client.app[DATABASE].server_id(), "api": "1",
    }  # fmt: skip
    row = next(line for line in table.splitlines() if name in line)
    assert all(cell in row for cell in ("127.0.0.1", str(client.port), __version__, "no"))


@pytest.mark.parametrize("value", ["eth0", "300.1.1.1"])
def test_bad_mdns_interfaces_is_a_clear_error(value: str, tmp_path: Path) -> None:
    """`mdns_interfaces` that is not "all" or IP addresses is refused with the key's name."""
    result = CliRunner().invoke(app, ["discover", "--data-dir", str(tmp_path)], env={"SPECCY_MDNS_INTERFACES": value})
    assert result.exit_code == 2
    assert "mdns_interfaces" in result.stderr
