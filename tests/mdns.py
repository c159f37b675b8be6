"""A Bonjour browser for tests, bound to 127.0.0.1 so nothing is ever multicast on a real interface."""

from __future__ import annotations

from types import TracebackType

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from speccyd.ops.discovery import SERVICE_TYPE
from tests.conftest import eventually

LOOPBACK_ONLY = ["127.0.0.1"]


class Browser:
    """Watches `_speccy._tcp` on loopback: which instances exist now, and their records."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    async def __aenter__(self) -> Browser:
        self.azc = AsyncZeroconf(interfaces=LOOPBACK_ONLY)
        self.browser = AsyncServiceBrowser(self.azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.browser.async_cancel()
        await self.azc.async_close()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self.names.discard(name)
        else:
            self.names.add(name)

    async def wait_for(self, instance: str, timeout: float = 15.0) -> AsyncServiceInfo:
        """The resolved records of `instance` (SRV, TXT, A), once a browser has seen it."""
        full = f"{instance}.{SERVICE_TYPE}"

        async def seen() -> bool:
            return full in self.names

        await eventually(seen, timeout=timeout, what=f"mDNS instance {instance!r}")
        info = AsyncServiceInfo(SERVICE_TYPE, full)
        assert await info.async_request(self.azc.zeroconf, 3000), f"{instance!r} did not resolve"
        return info

    async def wait_gone(self, instance: str, timeout: float) -> None:
        full = f"{instance}.{SERVICE_TYPE}"

        async def gone() -> bool:
            return full not in self.names

        await eventually(gone, timeout=timeout, what=f"mDNS instance {instance!r} to go away")
