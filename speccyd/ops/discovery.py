"""Bonjour: announcing this server as `_speccy._tcp` while it serves, and browsing for servers."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import asdict, dataclass
from typing import Any

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from speccyd import __version__
from speccyd.config.settings import Settings

log = logging.getLogger(__name__)

SERVICE_TYPE = "_speccy._tcp.local."
# How often the announcer looks for new or vanished addresses (DHCP renewals, a Wi-Fi switch, a VPN).
ADDRESS_CHECK_INTERVAL = 30.0
RESOLVE_TIMEOUT_MS = 3000


def zeroconf_interfaces(interfaces: tuple[str, ...]) -> list[str] | InterfaceChoice:
    return list(interfaces) if interfaces else InterfaceChoice.All


def _ip_version(settings: Settings) -> IPVersion | None:
    if settings.mdns_interfaces:
        return None  # zeroconf derives it from the listed addresses
    # Answering over IPv6 only makes sense when the server also listens on IPv6.
    return IPVersion.All if ":" in settings.host else IPVersion.V4Only


def txt_record(server_id: str, tls_fingerprint: str | None) -> dict[str, str]:
    """The TXT keys the apps read; host and port are in the SRV and A/AAAA records, never here."""
    txt = {"txtvers": "1", "id": server_id, "version": __version__, "api": "1", "path": "/"}
    txt["tls"] = "1" if tls_fingerprint else "0"
    if tls_fingerprint:
        txt["fp"] = tls_fingerprint
    return txt


def current_addresses(host: str, interfaces: tuple[str, ...]) -> list[str]:
    """The addresses to put in A/AAAA records, in a stable order so a change is a real change."""
    if interfaces:
        return sorted(interfaces)
    wildcard = host in {"0.0.0.0", "::", ""}
    if not wildcard:
        return [host]
    want_v6 = ":" in host
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(raw.split("%")[0])
            # Link-local IPv6 needs a scope id that an A/AAAA record cannot carry; loopback helps no one else.
            if address.is_loopback or address.is_link_local or (address.version == 6 and not want_v6):
                continue
            found.add(str(address))
    return sorted(found)


class Announcer:
    """One registered `_speccy._tcp` instance, from the first announcement to the goodbye."""

    def __init__(
        self,
        settings: Settings,
        server_id: str,
        tls_fingerprint: str | None,
        check_interval: float = ADDRESS_CHECK_INTERVAL,
    ) -> None:
        self._settings = settings
        self._txt = txt_record(server_id, tls_fingerprint)
        self._check_interval = check_interval
        self._zc = AsyncZeroconf(
            interfaces=zeroconf_interfaces(settings.mdns_interfaces), ip_version=_ip_version(settings)
        )
        self._task: asyncio.Task[None] | None = None
        self._info: AsyncServiceInfo | None = None
        self.registered = asyncio.Event()

    @property
    def instance_name(self) -> str | None:
        """The name actually registered: `name`, or `name-2` etc. after a conflict with another server."""
        if self._info is None or not self.registered.is_set():
            return None
        return self._info.name.removesuffix("." + SERVICE_TYPE)

    def start(self, port: int) -> None:
        """Announce the server on `port` (the bound one: with --port 0 only the running server knows it)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(port))

    async def _run(self, port: int) -> None:
        try:
            await self._announce(port)
        except Exception:
            # Serving matters more than being found: the server keeps running, reachable by address.
            log.exception("mDNS announcement failed; the apps will not find this server by themselves")

    async def _announce(self, port: int) -> None:
        addresses = current_addresses(self._settings.host, self._settings.mdns_interfaces)
        host_label = socket.gethostname().split(".")[0] or "speccyd"
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self._settings.name}.{SERVICE_TYPE}",
            port=port,
            properties=self._txt,
            parsed_addresses=addresses,
            server=f"{host_label}.local.",
        )
        self._info = info
        # Probing takes about 1.5 s; a name in use is answered by renaming to "name-2", as Bonjour does.
        announcements = await self._zc.async_register_service(info, allow_name_change=True)
        # Registered: answering queries from now on, while the unsolicited announcements go out.
        self.registered.set()
        log.info("announcing %r on mDNS (port %d, addresses %s)", self.instance_name, port, ", ".join(addresses))
        await announcements
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                addresses = await self._follow_addresses(info, addresses)
            except Exception:
                # A failed update (an interface vanishing mid-way) is retried at the next check.
                log.warning("could not update the mDNS announcement; retrying later", exc_info=True)

    async def _follow_addresses(self, info: AsyncServiceInfo, announced: list[str]) -> list[str]:
        now = current_addresses(self._settings.host, self._settings.mdns_interfaces)
        if now == announced:
            return announced
        log.info("addresses changed to %s; updating the mDNS announcement", ", ".join(now) or "none")
        if not self._settings.mdns_interfaces:
            # Listen and answer on interfaces that appeared since start-up, and drop vanished ones.
            await self._zc.async_update_interfaces()
        info.addresses = [socket.inet_pton(_family(a), a) for a in now]
        await (await self._zc.async_update_service(info))
        return now

    async def stop(self) -> None:
        """Send goodbyes (TTL 0) so browsers drop this server at once instead of after the record TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._info is not None and self.registered.is_set():
            self.registered.clear()
            await (await self._zc.async_unregister_service(self._info))

    async def close(self) -> None:
        await self.stop()
        await self._zc.async_close()


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@dataclass(frozen=True)
class FoundServer:
    name: str
    addresses: list[str]
    port: int
    version: str | None
    tls: bool
    fingerprint: str | None
    id: str | None
    api: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def browse(interfaces: tuple[str, ...], window: float) -> list[FoundServer]:
    """Every speccyd server that answers within `window` seconds, sorted by name."""
    azc = AsyncZeroconf(interfaces=zeroconf_interfaces(interfaces))
    names: set[str] = set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            names.discard(name)
        else:
            names.add(name)

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await asyncio.sleep(window)  # the browse window the user asked for: answers arrive during it
        infos = [AsyncServiceInfo(SERVICE_TYPE, name) for name in sorted(names)]
        resolved = await asyncio.gather(*(info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS) for info in infos))
    finally:
        await browser.async_cancel()
        await azc.async_close()
    found = []
    for info, ok in zip(infos, resolved, strict=True):
        if not ok or info.port is None:
            continue
        txt = info.decoded_properties
        found.append(
            FoundServer(
                name=info.name.removesuffix("." + SERVICE_TYPE),
                addresses=info.parsed_addresses(),
                port=info.port,
                version=txt.get("version"),
                tls=txt.get("tls") == "1",
                fingerprint=txt.get("fp"),
                id=txt.get("id"),
                api=txt.get("api"),
            )
        )
    return found
