"""systemd's two process protocols, without libsystemd: sockets passed by socket activation, and sd_notify.

Socket activation (sd_listen_fds(3)): the manager opens the listening sockets itself and passes them as file
descriptors 3, 4, ... with LISTEN_PID (the process they are meant for), LISTEN_FDS (how many) and
LISTEN_FDNAMES (their FileDescriptorName=, colon-separated). The manager keeps its own copy open, so while
the service restarts the kernel queues new connections instead of refusing them.

sd_notify(3): one datagram per message to the AF_UNIX socket named by NOTIFY_SOCKET (a path, or "@name" in
the abstract namespace), lines of KEY=VALUE: READY=1, STOPPING=1, RELOADING=1, STATUS=..., WATCHDOG=1.
WATCHDOG_USEC (and WATCHDOG_PID) say how often the manager expects WATCHDOG=1; sd_watchdog_enabled(3)
recommends half that interval.

Both read their variables once and remove them from the environment (the "unset_environment" of the C API),
so nothing this process starts takes them for its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first passed descriptor
# systemd passes at most a few hundred; anything larger in LISTEN_FDS is a broken environment, not sockets.
MAX_LISTEN_FDS = 1024
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class SocketActivationError(Exception):
    """The passed file descriptors cannot be served on; the message says which one and why."""


@dataclass(frozen=True)
class InheritedSocket:
    sock: socket.socket
    name: str  # FileDescriptorName= of the socket unit (default: the unit's name)
    fd: int

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """(host, port) of a TCP socket; None for a Unix socket."""
        if self.sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)


def listen_sockets(env: MutableMapping[str, str] | None = None) -> list[InheritedSocket]:
    """The listening sockets passed to this process by socket activation; [] when there are none.

    Like sd_listen_fds_with_names(unset_environment=1): the sockets are only ours when LISTEN_PID is our
    pid (a parent that was activated may have left the variables behind). Each one must be a listening
    stream socket; anything else is a configuration error worth stopping for.
    """
    env = os.environ if env is None else env
    pid, count, names = (env.pop(key, None) for key in _LISTEN_VARIABLES)
    if count is None or pid is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit() or not 0 < int(count) <= MAX_LISTEN_FDS:
        raise SocketActivationError(f"LISTEN_FDS={count!r} is not a number of sockets")
    n = int(count)
    labels = names.split(":") if names else []
    if len(labels) != n:
        labels = ["unknown"] * n  # sd_listen_fds_with_names does the same when the counts disagree
    found = []
    for index in range(n):
        fd = LISTEN_FDS_START + index
        try:
            os.set_inheritable(fd, False)  # ours alone from here on (systemd passes them without FD_CLOEXEC)
            sock = socket.socket(fileno=fd)  # family and type come from the descriptor itself
        except OSError as e:
            raise SocketActivationError(f"passed file descriptor {fd} ({labels[index]}): {e.strerror or e}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()  # not ours to close
            raise SocketActivationError(
                f"passed file descriptor {fd} ({labels[index]}) is not a listening stream socket: "
                "use ListenStream= in the socket unit"
            )
        sock.setblocking(False)
        found.append(InheritedSocket(sock, labels[index], fd))
    return found


def _notify_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux's abstract namespace: no file, a leading NUL byte
    if value.startswith("/"):
        return value
    return None  # "vsock:..." (systemd 253, for VMs) is not a speccyd case


class Notifier:
    """sd_notify: messages to the service manager, or nothing at all when there is none.

    Sending never raises: a manager that went away must not take the server with it.
    """

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.pop("NOTIFY_SOCKET", None)
        self._address = _notify_address(raw) if raw else None
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET=%s is not a Unix socket address; not notifying the service manager", raw)
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # not inherited (PEP 446)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send one message of KEY=VALUE lines; True when it was sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as e:
            log.debug("sd_notify %s failed: %s", fields, e)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd 253 wants the CLOCK_MONOTONIC time with RELOADING=1 (Type=notify-reload); older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when no watchdog is armed."""
    env = os.environ if env is None else env
    usec, pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
    if usec is None or not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def watchdog(notifier: Notifier, interval: float) -> None:
    """Ping the manager every `interval` from the event loop itself: a loop that hangs stops pinging, and
    systemd restarts the service (WatchdogSec=). Runs until cancelled."""
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
