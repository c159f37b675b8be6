"""A small keep-alive HTTP/1.1 load generator on raw asyncio protocols.

Why not aiohttp's ClientSession: on a 2-core machine the load generator gets one core, and ClientSession
spends ~150 µs of Python per request, so it saturates long before a bare aiohttp server does and every
ratio comes out near 1.0. This client sends pre-built request bytes and only reads the status line and
Content-Length, so the server under test is the bottleneck (the bench prints both processes' CPU to show
it). It speaks exactly what the servers here answer: keep-alive responses with a Content-Length, no
pipelining, no chunked bodies — anything else is an error, never a silent miscount.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field


class ProtocolError(Exception):
    """The server answered something this client does not parse (no Content-Length, extra bytes)."""


def build_request(method: str, path: str, port: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._in_body = False
        self._body_left = 0
        self._status = 0
        self._waiter: asyncio.Future[tuple[int, int]] | None = None
        self._body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._head[:end]).lower()
            extra = len(self._head) - end - 4
            self._head.clear()
            self._status = int(head[9:12])
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:
                self._fail(ProtocolError("response has no Content-Length"))
                return
            line_end = head.find(b"\r\n", marker + 2)
            self._body_size = int(head[marker + 17 : line_end if line_end > 0 else len(head)])
            self._body_left = self._body_size - extra
            self._in_body = True
        else:
            self._body_left -= len(data)
        if self._body_left == 0:
            self._in_body = False
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((self._status, self._body_size))
        elif self._body_left < 0:
            self._fail(ProtocolError("more bytes than Content-Length promised"))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"server closed the connection: {exc}"))

    async def request(self, raw: bytes) -> tuple[int, int]:
        """(status, body size) of one request on this kept-alive connection."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and all its threads, from /proc (Linux only; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    bytes_received: int = 0
    server_cpu_seconds: float | None = None  # CPU the server process used (all threads, user + system)
    client_cpu_seconds: float = 0.0  # same for this (load generator) process

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def server_cpu(self) -> float | None:
        """Fraction of one core the server used: near 1.0 means the server, not the client, was the limit."""
        return None if self.server_cpu_seconds is None else self.server_cpu_seconds / self.seconds

    @property
    def client_cpu(self) -> float:
        return self.client_cpu_seconds / self.seconds

    @property
    def server_us_per_request(self) -> float | None:
        """Server CPU per request: unlike req/s, barely moved by other programs competing for the cores."""
        return None if self.server_cpu_seconds is None else self.server_cpu_seconds / self.requests * 1e6


async def run_load(
    port: int, raw: bytes, *, count: int, concurrency: int, time_cap: float, server_pid: int | None = None
) -> LoadResult:
    """Send `raw` `count` times over `concurrency` kept-alive connections, stopping early at `time_cap`."""
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(_Connection, "127.0.0.1", port))[1] for _ in range(concurrency)]
    issued = 0
    statuses: Counter[int] = Counter()
    received = 0

    async def worker(connection: _Connection) -> None:
        nonlocal issued, received
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            status, size = await connection.request(raw)
            statuses[status] += 1
            received += size

    server_cpu0 = _cpu_seconds(server_pid) if server_pid else None
    client_cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + time_cap
    try:
        await asyncio.gather(*(worker(c) for c in connections))
        elapsed = time.perf_counter() - start
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    result = LoadResult(sum(statuses.values()), elapsed, statuses, received)
    result.client_cpu_seconds = time.process_time() - client_cpu0
    server_cpu1 = _cpu_seconds(server_pid) if server_pid else None
    if server_cpu0 is not None and server_cpu1 is not None:
        result.server_cpu_seconds = server_cpu1 - server_cpu0
    return result
