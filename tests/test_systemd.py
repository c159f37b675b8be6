"""systemd's protocols for real: a listening socket passed as fd 3 (LISTEN_FDS), and sd_notify messages read
from a real datagram socket (READY, STATUS, WATCHDOG, RELOADING, STOPPING), as the service manager sees them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from speccyd.ops.systemd import Notifier, SocketActivationError, listen_sockets, watchdog, watchdog_interval
from tests.conftest import eventually
from tests.mdns import Browser
from tests.server_process import (
    LOOPBACK_MDNS,
    SPECCYD,
    ServerProcess,
    activation_prefix,
    listening_socket,
    speccyd_env,
)
from tests.test_tls import init_tls

pytestmark = pytest.mark.process


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: every datagram, parsed into its KEY=VALUE lines."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET names it: a path, or "@name" (abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []  # (monotonic time received, fields)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(at, fields) for at, fields in self.messages if key in fields]

    def keys(self) -> list[str]:
        """The non-WATCHDOG messages in order, each as its sorted keys joined by '+'."""
        return ["+".join(sorted(f)) for _, f in self.messages if "WATCHDOG" not in f]


@contextlib.asynccontextmanager
async def notify_listener(address: str) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(address)
    task = asyncio.create_task(listener.run())
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.sock.close()


async def test_serves_on_the_passed_socket_and_announces_its_port(tmp_path: Path, upstream_url: str) -> None:
    """With LISTEN_FDS=1 speccyd serves on fd 3 (ignoring --port), logs so, and mDNS announces that socket's port."""
    name = f"sd-{uuid.uuid4().hex[:8]}"
    with listening_socket() as held:
        port = held.getsockname()[1]
        server = ServerProcess(
            tmp_path / "data", upstream_url, tmp_path / "log", env={**LOOPBACK_MDNS, "SPECCY_NAME": name}, listen=held
        )
        async with server, Browser() as browser:
            await server.start()
            assert server.port == port
            assert "socket speccyd.socket, fd 3, from the service manager" in server.log
            info = await browser.wait_for(name)
            assert info.port == port
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
            assert await server.stop() == 0
        # The socket is the manager's: still listening after the server exited, queueing the next connection.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


async def test_tls_on_the_passed_socket(tmp_path: Path, upstream_url: str) -> None:
    """A passed socket speaks HTTPS only when TLS is on; the TXT fingerprint pins the certificate on it."""
    data_dir = tmp_path / "data"
    printed = await asyncio.to_thread(init_tls, data_dir)
    name = f"sd-tls-{uuid.uuid4().hex[:8]}"
    with listening_socket() as held:
        port = held.getsockname()[1]
        env = {**LOOPBACK_MDNS, "SPECCY_NAME": name}
        server = ServerProcess(data_dir, upstream_url, tmp_path / "log", env=env, listen=held)
        async with server, Browser() as browser:
            await server.start()
            assert server.url == f"https://127.0.0.1:{port}"
            info = await browser.wait_for(name)
            assert (info.port, info.decoded_properties["fp"]) == (port, printed)
            async with aiohttp.ClientSession() as http:
                pinned = aiohttp.Fingerprint(bytes.fromhex(printed))
                async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=pinned) as response:
                    assert response.status == 200
                with pytest.raises(aiohttp.ClientError):
                    await http.get(f"http://127.0.0.1:{port}/healthz")
            assert await server.stop() == 0


@pytest.mark.parametrize("where", ["path", "abstract"])
async def test_sd_notify_messages(tmp_path: Path, upstream_url: str, where: str) -> None:
    """READY=1 only once it serves, WATCHDOG=1 every half WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP,
    STOPPING=1 at SIGTERM; to a socket file or an abstract one ("@name")."""
    address = str(tmp_path / "notify") if where == "path" else f"@speccyd-test-{uuid.uuid4().hex}"
    async with notify_listener(address) as manager:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
        server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", env=env)
        async with server:
            await server.start()
            await eventually(lambda: manager.having("READY"), what="READY=1")
            _, ready = manager.having("READY")[0]
            assert ready["STATUS"] == f"serving on {server.url}"
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as response:
                assert response.status == 200  # READY=1 came when requests were answered
            await eventually(lambda: len(manager.having("WATCHDOG")) >= 6, what="six watchdog pings")
            pings = [at for at, _ in manager.having("WATCHDOG")]
            gaps = [b - a for a, b in itertools.pairwise(pings[1:])]  # steady state
            assert max(gaps) < 0.4, gaps  # always within the manager's 0.4 s
            assert 0.15 < sorted(gaps)[len(gaps) // 2] < 0.3, gaps  # half of it, as sd_watchdog_enabled advises

            server.process.send_signal(signal.SIGHUP)
            await eventually(lambda: "SIGHUP: reloaded" in server.log, what="the reload")
            await eventually(lambda: len(manager.having("READY")) == 2, what="READY=1 after the reload")
            _, reloading = manager.having("RELOADING")[0]
            assert abs(int(reloading["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30e6
            assert await server.stop() == 0
        assert manager.keys() == [
            "STATUS",  # starting
            "READY+STATUS",
            "MONOTONIC_USEC+RELOADING+STATUS",
            "READY+STATUS",
            "STATUS+STOPPING",
        ]
        assert manager.having("STOPPING")[0][1]["STATUS"] == "finishing in-flight requests"


async def test_watchdog_pings_stop_while_the_event_loop_hangs(tmp_path: Path) -> None:
    """WATCHDOG=1 comes from the event loop: while the loop is blocked no ping goes out, so systemd can act."""
    address = str(tmp_path / "notify")
    async with notify_listener(address) as manager:
        notifier = Notifier({"NOTIFY_SOCKET": address})
        task = asyncio.create_task(watchdog(notifier, 0.05))
        try:
            await eventually(lambda: len(manager.having("WATCHDOG")) >= 3, what="three pings")
            time.sleep(0.6)  # the point: the loop itself hangs, as a stuck handler would make it
            hung_until = time.monotonic()
            await eventually(lambda: manager.having("WATCHDOG")[-1][0] > hung_until, what="pings to resume")
            pings = [at for at, _ in manager.having("WATCHDOG")]
            assert max(b - a for a, b in itertools.pairwise(pings)) >= 0.55
        finally:
            task.cancel()
            notifier.close()


def test_watchdog_and_listen_variables_are_ours_only() -> None:
    """Variables meant for another pid are ignored, and every one is removed from the environment once read."""
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert listen_sockets(env) == []
    assert env == {}
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(env) is None
    assert env == {}
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled  # a VM's socket: not ours to speak
    with pytest.raises(SocketActivationError, match="LISTEN_FDS='lots'"):
        listen_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "lots"})


async def test_a_passed_socket_that_is_not_listening_is_a_clear_error(tmp_path: Path) -> None:
    """A datagram socket at fd 3 (ListenDatagram= by mistake) stops the server with one line, exit 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wrong:
        wrong.bind(("127.0.0.1", 0))
        env = {**speccyd_env(), "LISTEN_FDS": "1"}
        argv = [*activation_prefix(wrong.fileno()), str(SPECCYD), "serve", "--data-dir", str(tmp_path / "data")]
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, pass_fds=(wrong.fileno(),), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, (out + err).decode()
    assert re.search(r"error: passed file descriptor 3 \(unknown\) is not a listening stream socket", err.decode())
    assert b"Traceback" not in err
