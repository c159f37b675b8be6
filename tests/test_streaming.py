"""GET /files/{id} while the file is generating: live streaming to any number of readers."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from speccyd.generation.chunking import split_text
from tests.conftest import AppClient, decode, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.server_process import start_server

MakeClient = Callable[..., Awaitable[AppClient]]
LIMIT = 200


def long_text(paragraphs: int = 5) -> str:
    return "\n\n".join(
        " ".join(f"P{p} sentence {s} says something about the spec." for s in range(6)) for p in range(paragraphs)
    )


def chunk(index: int) -> str:
    """The exact text of one chunk of long_text(): a fault matching it hits that chunk and no other."""
    return split_text(long_text(), LIMIT)[index]


async def read_some(response: aiohttp.ClientResponse, at_least: int) -> bytes:
    """Read until at least `at_least` bytes have arrived (bounded by the eventually deadline)."""
    received = bytearray()

    async def enough() -> bool:
        received.extend(await asyncio.wait_for(response.content.readany(), 10))
        return len(received) >= at_least

    await eventually(enough, what=f"{at_least} bytes streamed")
    return bytes(received)


async def paused_long_generation(
    make_client: MakeClient, fake: FakeUpstream, fault: str, at_chunk: int
) -> tuple[AppClient, dict[str, str], str, str, asyncio.Event]:
    """A long pcm text generating in chunks, held by `fault` at chunk `at_chunk` until the event is set.

    Returns the client, the signed-in headers, the file's URL, its content hash and the release event.
    """
    client = await make_client(upstream_max_chars=LIMIT)
    release = asyncio.Event()
    fake.faults.append(Fault(fault, pause=release, match=chunk(at_chunk)))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=long_text(), format="pcm")
    return client, headers, f"/files/{body['file_id']}", body["content_hash"], release


async def test_first_bytes_stream_before_generation_completes(client: AppClient, fake: FakeUpstream) -> None:
    """A reader gets the upstream's first bytes while the rest is still being generated, then the whole file."""
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="Stream me.")
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"] == "audio/mpeg"
    first = await read_some(response, 1)
    state = await (await client.get(f"/tts/{body['content_hash']}/status", headers=headers)).json()
    assert state["status"] == "generating"
    release.set()
    streamed = first + await response.read()
    assert streamed == FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)

    await wait_status(client, headers, body["content_hash"])
    complete = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert complete.headers.get("ETag") and complete.headers.get("Accept-Ranges") == "bytes"
    assert await complete.read() == streamed
    ranged = await client.get(f"/files/{body['file_id']}", headers={**headers, "Range": "bytes=10-19"})
    assert (ranged.status, await ranged.read()) == (206, streamed[10:20])


async def test_signed_url_streams_while_generating(client: AppClient, fake: FakeUpstream) -> None:
    """The signed `url` (what AVPlayer opens) streams a generating file the same way, without a session."""
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="Signed stream.")
    response = await client.get(body["url"])
    assert response.status == 200
    await read_some(response, 1)
    release.set()
    assert len(await response.read()) > 0


async def test_many_readers_and_late_joiners_get_identical_complete_streams(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Readers who start before, during and near the end of generation all receive the same complete bytes."""
    client, headers, url, content_hash, release = await paused_long_generation(make_client, fake, "pause_mid", 3)
    early = [await client.get(url, headers=headers) for _ in range(5)]
    head = await read_some(early[0], fake.audio_size * 2)  # chunks 1 and 2 at least are through
    late = [await client.get(url, headers=headers) for _ in range(5)]
    release.set()
    streams = await asyncio.gather(*(r.read() for r in early + late))
    streams[0] = head + streams[0]
    await wait_status(client, headers, content_hash)
    final = await (await client.get(url, headers=headers)).read()
    assert all(r.status == 200 for r in early + late)
    assert all(stream == final for stream in streams)


async def test_a_reader_who_disconnects_harms_nobody(make_client: MakeClient, fake: FakeUpstream) -> None:
    """One reader dropping mid-stream leaves the job and the other readers untouched."""
    client, headers, url, content_hash, release = await paused_long_generation(make_client, fake, "pause_mid", 2)
    leaver, stayer = await client.get(url, headers=headers), await client.get(url, headers=headers)
    await read_some(leaver, 1)
    leaver.close()
    release.set()
    streamed = await stayer.read()
    await wait_status(client, headers, content_hash)
    assert streamed == await (await client.get(url, headers=headers)).read()


async def test_failure_mid_stream_ends_the_response_abnormally(make_client: MakeClient, fake: FakeUpstream) -> None:
    """When generation fails after bytes went out, readers get a broken stream (never a clean short file)."""
    client = await make_client(upstream_attempts=1)
    release = asyncio.Event()
    fake.faults.append(Fault("reset_mid", pause=release))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="Doomed.")
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    await read_some(response, 1)
    release.set()
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert "connection" in failed["error"]


async def test_retry_after_partial_bytes_cuts_those_readers_and_completes(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """A retried chunk never corrupts a stream: readers past its start are cut, the file then completes whole."""
    client, headers, url, content_hash, release = await paused_long_generation(make_client, fake, "reset_mid", 0)
    reader = await client.get(url, headers=headers)
    await read_some(reader, 1)
    release.set()
    with pytest.raises(aiohttp.ClientPayloadError):
        await reader.read()
    await wait_status(client, headers, content_hash)
    inputs = sorted({str((c.body or {})["input"]) for c in fake.speech_calls}, key=long_text().index)
    by_input = {
        str((c.body or {})["input"]): FakeUpstream.audio_for(c.body or {}, fake.audio_size) for c in fake.speech_calls
    }
    assert await (await client.get(url, headers=headers)).read() == b"".join(by_input[i] for i in inputs)


async def test_head_on_a_generating_file_sends_headers_only(client: AppClient, fake: FakeUpstream) -> None:
    """HEAD on a file being generated answers 200 with the audio type and no body, without waiting for it."""
    headers = await sign_in(client)
    fake.gate.clear()
    _, body = await generate(client, headers, text="Heads up.")
    head = await client.head(f"/files/{body['file_id']}", headers=headers)
    assert (head.status, head.headers["Content-Type"]) == (200, "audio/mpeg")
    assert await head.read() == b""
    fake.gate.set()
    await wait_status(client, headers, body["content_hash"])


async def test_a_joined_wav_asked_for_while_generating_arrives_whole_with_true_sizes(
    make_client: MakeClient, fake: FakeUpstream, clips: dict[str, list[bytes]], tmp_path: Path
) -> None:
    """A long WAV's RIFF sizes are only known at the end, so a download started while it generates is answered
    once it is finished: the same bytes as the stored file (Content-Length, exact sizes), never a header that
    says "unknown" and then differs."""
    fake.clips = clips
    client = await make_client(upstream_max_chars=LIMIT)
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release, match=chunk(2)))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=long_text(), format="wav")
    pending = asyncio.ensure_future(client.get(f"/files/{body['file_id']}", headers=headers))
    await eventually(lambda: any(chunk(2) == (c.body or {}).get("input") for c in fake.speech_calls), what="chunk 3")
    for _ in range(50):  # the loop turns many times: the answer still waits for the file
        await asyncio.sleep(0)
    assert not pending.done()
    release.set()
    response = await pending
    streamed = await response.read()
    assert (response.status, response.headers["Content-Length"]) == (200, str(len(streamed)))
    final = await (await client.get(f"/files/{body['file_id']}", headers=headers)).read()
    assert streamed == final
    assert struct.unpack("<I", final[4:8])[0] == len(final) - 8
    assert decode(final, "wav", tmp_path).errors == ""


@pytest.mark.process
async def test_real_server_streams_a_long_text_through_the_signed_url(
    tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """`speccyd serve`: a long text's signed URL starts streaming before generation ends and matches the file."""
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release, match=chunk(3)))
    server = await start_server(tmp_path / "data", upstream_url, tmp_path / "log", SPECCY_UPSTREAM_MAX_CHARS=str(LIMIT))
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            headers = await sign_in(session)
            _, body = await generate(session, headers, text=long_text(), format="pcm")
            async with session.get(body["url"]) as live:
                assert live.status == 200
                first = await read_some(live, fake.audio_size)
                release.set()
                streamed = first + await live.read()
            async with session.get(body["url"]) as stored:
                assert stored.headers.get("Content-Length") == str(len(streamed))
                assert await stored.read() == streamed
    finally:
        await server.stop()


@pytest.mark.process
async def test_shutdown_cuts_live_readers_instead_of_waiting(
    tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """SIGTERM with a reader following a stuck generation exits promptly; the reader sees a cut stream."""
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release))
    server = await start_server(tmp_path / "data", upstream_url, tmp_path / "log", SPECCY_SHUTDOWN_TIMEOUT="5m")
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            headers = await sign_in(session)
            _, body = await generate(session, headers, text="Stuck.")
            async with session.get(body["url"]) as live:
                await read_some(live, 1)
                assert await server.stop(timeout=20) == 0  # far below the 5 minutes it would otherwise wait
                with pytest.raises(aiohttp.ClientPayloadError):
                    await live.read()
    finally:
        release.set()
        await server.stop()
