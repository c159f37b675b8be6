"""Progressive downloads of a file still generating: ranges answered exactly, curl -C - and wget -c resume right."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from speccyd.generation.chunking import split_text
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.test_streaming import LIMIT, chunk, long_text, read_some

MakeClient = Callable[..., Awaitable[AppClient]]


async def paused(
    make_client: MakeClient, fake: FakeUpstream, at_chunk: int = 3
) -> tuple[AppClient, dict[str, str], dict[str, str], asyncio.Event]:
    """A long pcm text whose chunk `at_chunk` holds half way until released: chunks before it are final."""
    client = await make_client(upstream_max_chars=LIMIT)
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release, match=chunk(at_chunk)))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=long_text(), format="pcm")
    await eventually(lambda: any(chunk(at_chunk) == (c.body or {}).get("input") for c in fake.speech_calls))
    return client, headers, body, release


async def test_a_range_of_final_bytes_is_a_206_of_unknown_total_length(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """`bytes=a-b` inside what is final answers at once: 206, `Content-Range: bytes a-b/*` (RFC 9110 §14.4),
    exactly the finished file's bytes."""
    client, headers, body, release = await paused(make_client, fake)
    response = await client.get(body["url"], headers={"Range": "bytes=10-4009"})
    assert response.status == 206
    assert (response.headers["Content-Range"], response.headers["Content-Length"]) == ("bytes 10-4009/*", "4000")
    part = await response.read()
    release.set()
    await wait_status(client, headers, body["content_hash"])
    final = await (await client.get(body["url"])).read()
    assert part == final[10:4010]


async def test_a_range_that_needs_the_end_waits_for_it_and_is_exact(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """`bytes=a-` and `bytes=-n` need the end: answered once the file is finished, 206 with its real length; a
    range past the end is then 416 `bytes */size`. Nothing is answered from bytes that could still change."""
    client, headers, body, release = await paused(make_client, fake)
    open_ended = asyncio.ensure_future(client.get(body["url"], headers={"Range": "bytes=100-"}))
    suffix = asyncio.ensure_future(client.get(body["url"], headers={"Range": "bytes=-50"}))
    beyond = asyncio.ensure_future(client.get(body["url"], headers={"Range": "bytes=900000-900010"}))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not (open_ended.done() or suffix.done() or beyond.done())
    release.set()
    final = await (await client.get(body["url"], headers={"Range": "bytes=0-"})).read()  # live, or the file
    await wait_status(client, headers, body["content_hash"])
    assert len(final) == len(split_text(long_text(), LIMIT)) * fake.audio_size
    first, last, past = await open_ended, await suffix, await beyond
    assert (first.status, first.headers["Content-Range"]) == (206, f"bytes 100-{len(final) - 1}/{len(final)}")
    assert await first.read() == final[100:]
    assert (last.status, await last.read()) == (206, final[-50:])
    assert (past.status, past.headers["Content-Range"]) == (416, f"bytes */{len(final)}")


async def test_the_whole_stream_and_if_range_are_answered_live(make_client: MakeClient, fake: FakeUpstream) -> None:
    """`bytes=0-` (what ffmpeg sends) is the whole stream, live; with If-Range, which cannot name a file not yet
    finished, the Range is ignored (RFC 9110 §13.1.5): both stream at once as 200, chunked."""
    client, headers, body, release = await paused(make_client, fake)
    for extra in ({"Range": "bytes=0-"}, {"Range": "bytes=5-9", "If-Range": '"abc"'}):
        response = await client.get(body["url"], headers=extra)
        assert (response.status, response.headers["Transfer-Encoding"]) == (200, "chunked")
        assert "Content-Range" not in response.headers
        await read_some(response, 1)
        response.close()
    release.set()
    await wait_status(client, headers, body["content_hash"])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install -y {name})")
    return path


async def _run(*args: str, timeout: float = 60) -> int:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout)


async def slow_generation(
    make_client: MakeClient, fake: FakeUpstream
) -> tuple[AppClient, dict[str, str], dict[str, str]]:
    """A long pcm text whose audio trickles in over a few seconds."""
    fake.chunk_size, fake.chunk_delay = 200, 0.02
    client = await make_client(upstream_max_chars=LIMIT, chunk_concurrency=1)
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=long_text(), format="pcm")
    return client, headers, body


async def test_curl_resumes_an_interrupted_download_to_the_finished_bytes(
    make_client: MakeClient, fake: FakeUpstream, tmp_path: Path
) -> None:
    """curl cut off while the file generates, then `curl -C -` (still generating, and again once ready):
    the file on disk is the finished file byte for byte."""
    curl = _tool("curl")
    client, _, body = await slow_generation(make_client, fake)
    url = str(client.make_url(body["url"]))
    out = tmp_path / "audio.pcm"
    assert await _run(curl, "-s", "-o", str(out), "--max-time", "1", url) != 0  # cut off: 28, timeout
    partial = out.stat().st_size
    assert 0 < partial < len(split_text(long_text(), LIMIT)) * fake.audio_size
    assert await _run(curl, "-s", "-f", "-C", "-", "-o", str(out), url) == 0
    final = await (await client.get(body["url"])).read()
    assert out.read_bytes() == final
    out.write_bytes(final[:1234])  # interrupted once more, resumed from the finished file
    assert await _run(curl, "-s", "-f", "-C", "-", "-o", str(out), url) == 0
    assert out.read_bytes() == final


async def test_wget_continues_an_interrupted_download_to_the_finished_bytes(
    make_client: MakeClient, fake: FakeUpstream, tmp_path: Path
) -> None:
    """wget killed part way through a file that is generating, then `wget -c`: the finished file exactly."""
    wget = _tool("wget")
    client, headers, body = await slow_generation(make_client, fake)
    url = str(client.make_url(body["url"]))
    out = tmp_path / "audio.pcm"
    process = await asyncio.create_subprocess_exec(wget, "-q", "-O", str(out), url)
    await eventually(lambda: out.exists() and out.stat().st_size > 1000, what="wget to have some bytes")
    process.kill()
    await process.wait()
    assert out.stat().st_size < len(split_text(long_text(), LIMIT)) * fake.audio_size
    assert await _run(wget, "-q", "-c", "-O", str(out), url) == 0
    await wait_status(client, headers, body["content_hash"])
    assert out.read_bytes() == await (await client.get(body["url"])).read()
