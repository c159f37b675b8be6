"""Long text: split into chunks, generated in parallel within limits, joined into one playable file."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from speccyd.generation.chunking import split_text
from speccyd.media import id3, mpeg
from speccyd.media.join import mp3_frame_length
from tests.conftest import AppClient, decode, eventually, generate, sign_in, wait_status
from tests.fake_upstream import CLIP_DURATIONS, FakeUpstream, Fault

MakeClient = Callable[..., Awaitable[AppClient]]
LIMIT = 200  # upstream_max_chars in these tests: long text stays small and fast


def long_text(paragraphs: int = 6) -> str:
    """Paragraphs of numbered sentences; every chunk names its paragraph ("P3") so faults can target one."""
    return "\n\n".join(
        " ".join(f"P{p} sentence {s} says something about the spec." for s in range(6)) for p in range(paragraphs)
    )


def in_text_order(fake: FakeUpstream, text: str) -> list[str]:
    inputs = [str((call.body or {})["input"]) for call in fake.speech_calls]
    return sorted(inputs, key=text.index)


def info_frames(mp3: bytes) -> int:
    """How many Xing/Info/VBRI header frames a file has, walking it frame by frame after its ID3 tag."""
    position = id3.tag_size(mp3[:10]) or 0  # syncsafe: 7 bits a byte (speccyd's own tag is over 127 bytes)
    found = 0
    while (length := mp3_frame_length(mp3[position : position + 4])) is not None:
        frame = mp3[position : position + length]
        found += any(tag in frame[:40] for tag in (b"Xing", b"Info", b"VBRI"))
        position += length
    assert position == len(mp3), "the file is whole frames to the end"
    return found


async def download(client: AppClient, headers: dict[str, str], file_id: str) -> bytes:
    response = await client.get(f"/files/{file_id}", headers=headers)
    assert response.status == 200
    return await response.read()


async def test_long_text_is_split_within_the_limit_and_joined_in_order(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Each upstream call gets at most upstream_max_chars; the file is the chunks' audio in text order."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    text = long_text()
    status, body = await generate(client, headers, text=text, format="pcm")
    assert status == 202
    await wait_status(client, headers, body["content_hash"])
    inputs = in_text_order(fake, text)
    assert inputs == split_text(text, LIMIT)
    assert all(len(chunk) <= LIMIT for chunk in inputs)
    assert len(inputs) == len(fake.speech_calls) > 1
    by_input = {
        str((c.body or {})["input"]): FakeUpstream.audio_for(c.body or {}, fake.audio_size) for c in fake.speech_calls
    }
    assert await download(client, headers, body["file_id"]) == b"".join(by_input[i] for i in inputs)


async def test_content_hash_covers_the_whole_text(make_client: MakeClient) -> None:
    """A long text's content_hash is the core formula over the whole text, not over a chunk."""
    from speccyd.generation.speech import content_hash

    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    text = long_text()
    _, body = await generate(client, headers, text=text)
    assert body["content_hash"] == content_hash("tts-1", "alloy", "mp3", 1.0, None, text)


async def test_chunks_per_job_are_bounded_by_chunk_concurrency(make_client: MakeClient, fake: FakeUpstream) -> None:
    """One job has at most chunk_concurrency upstream calls in flight."""
    client = await make_client(upstream_max_chars=LIMIT, chunk_concurrency=2, upstream_concurrency=8)
    headers = await sign_in(client)
    fake.gate.clear()
    _, body = await generate(client, headers, text=long_text())
    await eventually(lambda: len(fake.speech_calls) == 2, what="two chunks in flight")
    fake.gate.set()
    await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == len(split_text(long_text(), LIMIT))
    assert fake.max_in_flight == 2


async def test_all_jobs_together_stay_within_upstream_concurrency(make_client: MakeClient, fake: FakeUpstream) -> None:
    """Two long jobs with chunk_concurrency 4 never exceed upstream_concurrency (3) calls in total."""
    client = await make_client(upstream_max_chars=LIMIT, chunk_concurrency=4, upstream_concurrency=3)
    headers = await sign_in(client)
    fake.gate.clear()
    _, first = await generate(client, headers, text=long_text())
    _, second = await generate(client, headers, text=long_text() + " Another.")
    await eventually(lambda: len(fake.speech_calls) == 3, what="three calls in flight")
    fake.gate.set()
    await wait_status(client, headers, first["content_hash"])
    await wait_status(client, headers, second["content_hash"])
    assert fake.max_in_flight == 3


async def test_status_reports_chunk_progress(make_client: MakeClient, fake: FakeUpstream) -> None:
    """While generating, status says how many of how many chunks are done; a ready file has no counters."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    text = long_text()
    total = len(split_text(text, LIMIT))
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release, match=split_text(text, LIMIT)[-1]))
    _, body = await generate(client, headers, text=text)

    async def progress() -> dict[str, object] | None:
        state = await (await client.get(f"/tts/{body['content_hash']}/status", headers=headers)).json()
        return state if state.get("chunks_done") == total - 1 else None

    state = await eventually(progress, what="all chunks but the paused one done")
    assert (state["status"], state["chunks_total"]) == ("generating", total)
    release.set()
    ready = await wait_status(client, headers, body["content_hash"])
    assert "chunks_done" not in ready


async def test_a_chunk_is_retried_alone(make_client: MakeClient, fake: FakeUpstream) -> None:
    """A retryable failure of one chunk retries that chunk only, and the file completes."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    text = long_text()
    fake.faults.extend([Fault(status=503, match="P2 "), Fault("reset_mid", match="P3 ")])
    _, body = await generate(client, headers, text=text, format="pcm")
    await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == len(split_text(text, LIMIT)) + 2


async def test_one_chunk_failing_fails_the_file_and_keeps_nothing(
    make_client: MakeClient, fake: FakeUpstream, data_dir: Path
) -> None:
    """A permanent failure of one chunk fails the whole file, names the chunk, and leaves no audio behind."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    fake.faults.append(Fault(status=400, message="bad chunk", match="P3 "))
    _, body = await generate(client, headers, text=long_text())
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert "bad chunk" in failed["error"]
    assert "chunk " in failed["error"]
    audio = data_dir / "audio"
    await eventually(lambda: not [p for p in audio.rglob("*") if p.is_file()], what="no audio or temp files")
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert response.status == 410


@pytest.mark.parametrize("fmt", ["opus", "flac"])
async def test_long_text_in_unjoinable_formats_is_refused(make_client: MakeClient, fmt: str) -> None:
    """Opus and FLAC past upstream_max_chars get a 400 that names the formats that work."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    status, body = await generate(client, headers, text=long_text(), format=fmt)
    assert status == 400
    assert body["error"]["code"] == "format_not_joinable"
    for usable in ("mp3", "aac", "wav", "pcm"):
        assert usable in body["error"]["message"]
    status, _ = await generate(client, headers, text="Short enough.", format=fmt)
    assert status == 202


async def test_text_over_max_text_chars_is_refused(make_client: MakeClient) -> None:
    """Text past max_text_chars is a 400 text_too_long; the old 4096 limit is gone."""
    client = await make_client(max_text_chars=10_000)
    headers = await sign_in(client)
    status, body = await generate(client, headers, text="word " * 2001)
    assert (status, body["error"]["code"]) == (400, "text_too_long")
    status, _ = await generate(client, headers, text="word " * 1000)
    assert status == 202


@pytest.mark.parametrize("fmt", ["mp3", "aac", "wav", "pcm"])
async def test_joined_real_audio_decodes_as_one_track(
    make_client: MakeClient, fake: FakeUpstream, clips: dict[str, list[bytes]], fmt: str, tmp_path: Path
) -> None:
    """Real encoded chunks join into a file a real decoder reads without errors, as long as the parts together."""
    fake.clips = clips
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    text = long_text(4)
    _, body = await generate(client, headers, text=text, format=fmt)
    await wait_status(client, headers, body["content_hash"])
    joined = await download(client, headers, body["file_id"])

    parts = [call.clip or 0 for call in fake.speech_calls]
    assert len(parts) > 2
    seconds = {clip: decode(clips[fmt][clip], fmt, tmp_path).seconds for clip in set(parts)}
    expected = sum(seconds[clip] for clip in parts)
    assert sum(CLIP_DURATIONS[call.clip or 0] for call in fake.speech_calls) == pytest.approx(
        expected, abs=0.1 * len(parts)
    )
    whole = decode(joined, fmt, tmp_path)
    assert whole.errors == ""
    # A joined mp3 part drops the whole frames nearest to its encoder delay and padding, so it decodes as
    # long as alone within a frame (576 samples at 24 kHz); ADTS aac, wav and pcm are exact.
    slack = 576 / 24000 * len(parts) if fmt == "mp3" else 0.001
    assert whole.seconds == pytest.approx(expected, abs=slack)
    if fmt == "mp3":
        assert joined.count(b"ID3") == 1 and joined.startswith(b"ID3")
        assert info_frames(joined) == 0
    if fmt == "wav":
        riff, data_size = (
            struct.unpack("<I", joined[4:8])[0],
            struct.unpack("<I", joined[joined.index(b"data") + 4 :][:4])[0],
        )
        assert riff == len(joined) - 8
        assert data_size == len(joined) - joined.index(b"data") - 8
        assert joined.count(b"RIFF") == 1


async def test_single_chunk_real_audio_is_served_unchanged(
    make_client: MakeClient, fake: FakeUpstream, clips: dict[str, list[bytes]]
) -> None:
    """Text within the limit is the upstream's file byte for byte, but for mp3's tags and Info frame."""
    fake.clips = clips
    client = await make_client()
    headers = await sign_in(client)
    for fmt in ("mp3", "aac", "wav", "opus", "flac"):
        _, body = await generate(client, headers, text=f"Short {fmt}.", format=fmt)
        await wait_status(client, headers, body["content_hash"])
        served = await download(client, headers, body["file_id"])
        sent = clips[fmt][FakeUpstream.clip_index(f"Short {fmt}.")]
        if fmt == "mp3":
            # Only its frames: what the HLS segments hold, so every decoder plays the same samples.
            scanner, frames = mpeg.scan_all(sent)
            assert scanner.id3v2_size and scanner.info_frame is not None
            assert served == sent[frames[0].offset :]
        else:
            assert served == sent
