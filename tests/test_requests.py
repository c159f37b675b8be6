"""Requests at the HTTP level, against a real `speccyd serve`: aiohttp's own refusals in the JSON envelope,
compressed bodies refused without inflating them, refused bodies never read to the end, and a body limit that
fits the longest text in any JSON encoding."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from speccyd.generation.speech import MAX_INSTRUCTIONS, max_body_bytes
from tests.conftest import AppClient, sign_in
from tests.server_process import ServerProcess

pytestmark = pytest.mark.process


@pytest.fixture
async def server(tmp_path: Path, upstream_url: str) -> AsyncIterator[ServerProcess]:
    async with ServerProcess(tmp_path / "data", upstream_url, tmp_path / "server.log") as process:
        yield await process.start()


async def exchange(port: int, data: bytes, *, keep_sending: bytes = b"", timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes; return everything the server answered and whether it closed the connection (EOF or
    reset) within `timeout`. With `keep_sending`, those bytes are sent again and again meanwhile."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    closed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if keep_sending:
                try:
                    writer.write(keep_sending)
                    await asyncio.wait_for(writer.drain(), 0.05)
                except TimeoutError:
                    pass
                except OSError:
                    closed = True
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if closed:
                break
    finally:
        writer.close()
    return received, closed


def parse(response: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    return status, headers, json.loads(body[:length]) if body else None


def assert_envelope(response: bytes, status: int) -> dict[str, str]:
    got, headers, body = parse(response)
    assert got == status, response[:300]
    assert headers["content-type"].startswith("application/json"), headers
    assert set(body) == {"error"} and isinstance(body["error"]["code"], str), body
    assert isinstance(body["error"]["message"], str)
    error: dict[str, str] = body["error"]
    return error


POST_JSON = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

MALFORMED = {
    "request line over 8 KiB": b"GET /healthz?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 KiB": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "300 headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(300)) + b"\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00 hello\r\n\r\n",
    "bad method": b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "control byte in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "Content-Length and Transfer-Encoding": b"POST /auth/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": b"POST /auth/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n"
    b"\r\nabcd",
    "unknown Transfer-Encoding": b"POST /auth/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: rot13\r\n\r\n",
}


async def test_parser_refusals_are_json_envelopes(server: ServerProcess) -> None:
    """Whatever aiohttp's parser refuses gets the JSON envelope (never text/plain), and the connection closes."""
    for name, raw in MALFORMED.items():
        response, closed = await exchange(server.port, raw)
        error = assert_envelope(response, 400)
        assert error["code"] == "bad_request", (name, error)
        assert closed, name
    log = server.log
    assert "Traceback" not in log and log.count("rejected a malformed request") >= len(MALFORMED)


async def test_bad_framing_inside_a_body_is_a_400_envelope(server: ServerProcess) -> None:
    """A chunked body that breaks its framing half way is a 400 in the envelope, never a 500."""
    head = POST_JSON % b"/auth/verify" + b"Transfer-Encoding: chunked\r\n\r\n"
    for broken in (b'5\r\n{"ope\r\nzz\r\n', b'5\r\n{"openai\r\n0\r\n\r\n', b"ffffffffffffffffffff\r\n"):
        response, _ = await exchange(server.port, head + broken)
        assert_envelope(response, 400)
    assert "Traceback" not in server.log


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip", "gzip, identity", "compress"])
async def test_compressed_bodies_are_refused_with_415_and_never_inflated(server: ServerProcess, encoding: str) -> None:
    """A compressed body is a JSON 415 and the connection closes; a 1 GiB deflate bomb costs no time at all."""
    bomb = zlib.compress(b" " * (64 * 1024 * 1024), 9) * 16  # 64 MiB of spaces, 16 times: 1 GiB inflated
    body = gzip.compress(json.dumps({"openai_token": "sk-test-alice"}).encode()) if encoding == "gzip" else bomb
    head = (
        f"POST /auth/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    response, closed = await exchange(server.port, head + body)
    error = assert_envelope(response, 415)
    assert error["code"] == "unsupported_content_encoding" and "Content-Encoding" in error["message"]
    assert closed
    assert time.monotonic() - started < 3


async def test_a_declared_oversized_body_is_refused_at_once_and_never_read(server: ServerProcess) -> None:
    """Content-Length past the limit: 413 before a byte of the body is sent, then the connection closes."""
    head = POST_JSON % b"/tts/generate" + b"Content-Length: 100000000\r\n\r\n"
    response, closed = await exchange(server.port, head, timeout=3)
    error = assert_envelope(response, 413)
    assert error["code"] == "body_too_large" and f"{max_body_bytes(100_000):,} bytes" in error["message"]
    assert closed


async def test_an_oversized_chunked_body_is_not_read_to_its_end(server: ServerProcess) -> None:
    """A chunked body that grows past the limit gets a 413 and the server hangs up while the client still sends."""
    head = POST_JSON % b"/auth/verify" + b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    first = head + chunk * (max_body_bytes(100_000) // 0x10000 + 2)
    started = time.monotonic()
    response, closed = await exchange(server.port, first, keep_sending=chunk, timeout=8)
    assert_envelope(response, 413)
    assert closed, "the server kept reading the body after answering 413"
    # aiohttp's lingering close would have read on for 10 s.
    assert time.monotonic() - started < 5


async def test_the_longest_text_fits_in_any_json_encoding(make_client: Any) -> None:
    """max_text_chars astral characters as \\u surrogate pairs, with 4,096 such instructions, is not a 413."""
    client: AppClient = await make_client()
    headers = await sign_in(client)
    body = {
        "text": "\U0001f600" * 100_000,
        "instructions": "\U0001f600" * MAX_INSTRUCTIONS,
        "model": "gpt-4o-mini-tts",
    }
    raw = json.dumps(body, ensure_ascii=True).encode()  # 12 bytes per character
    assert len(raw) > 1024 * 1024
    assert len(raw) <= max_body_bytes(100_000)
    response = await client.post(
        "/tts/generate", data=io.BytesIO(raw), headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status == 202, await response.text()


async def test_the_body_limit_follows_max_text_chars(make_client: Any) -> None:
    """A smaller max_text_chars gives a smaller body limit, named in bytes in the 413."""
    client: AppClient = await make_client(max_text_chars=1000)
    headers = await sign_in(client)
    raw = json.dumps({"text": "a" * (max_body_bytes(1000) + 10)}).encode()
    response = await client.post(
        "/tts/generate", data=io.BytesIO(raw), headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status == 413
    assert f"{max_body_bytes(1000):,} bytes" in (await response.json())["error"]["message"]
    assert response.headers.get("Connection", "").lower() == "close"
