"""Playback the way Apple's players want it: HLS playlists and segments, played by ffmpeg and read by m3u8."""

from __future__ import annotations

import asyncio
import itertools
import re
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import m3u8
import pytest

from speccyd.app import create_app
from speccyd.media import id3
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.playback_helpers import DURATIONS, LONG, clips, ffmpeg_play, without_dts_warnings
from tests.test_tls import init_tls

MakeClient = Callable[..., Awaitable[AppClient]]
LIMIT = 200  # upstream_max_chars: each paragraph below is one upstream call of 2-3 s of audio


def document(paragraphs: int = 12, headings: bool = True) -> str:
    """A Markdown spec: a title, a section heading every four paragraphs, paragraphs of ~150 characters."""
    parts = ["# The speccyd playback spec"] if headings else []
    for p in range(paragraphs):
        if headings and p and p % 4 == 0:
            parts.append(f"## Section {p // 4 + 1}")
        parts.append(" ".join(f"Paragraph {p} sentence {s} says what the server does." for s in range(3)))
    return "\n\n".join(parts)


async def started(
    make_client: MakeClient, fake: FakeUpstream, fmt: str = "mp3", text: str | None = None, **settings: Any
) -> tuple[AppClient, dict[str, str], dict[str, Any]]:
    fake.clips = clips()
    client = await make_client(upstream_max_chars=LIMIT, **settings)
    headers = await sign_in(client)
    status, body = await generate(client, headers, text=text or document(), format=fmt)
    assert status == 202
    return client, headers, body


def url(client: AppClient, path: str) -> str:
    return str(client.make_url(path))


async def text_of(client: AppClient, path: str, **kwargs: Any) -> str:
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    return await response.text()


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
async def test_a_ready_file_gets_a_vod_playlist_that_ffmpeg_plays_to_its_timeline_duration(
    make_client: MakeClient, fake: FakeUpstream, fmt: str
) -> None:
    """A file that was ready before its playlist was asked for gets VOD with #EXT-X-ENDLIST; ffmpeg's HLS
    demuxer plays it without errors for the timeline's duration (within 0.1 s), and m3u8 reads the same."""
    client, headers, body = await started(make_client, fake, fmt)
    ready = await wait_status(client, headers, body["content_hash"])
    assert ready["playlist_url"].startswith(f"/files/{body['file_id']}/playlist.m3u8?exp=")
    text = await text_of(client, ready["playlist_url"])
    playlist = m3u8.loads(text)
    assert (playlist.playlist_type, playlist.is_endlist, playlist.target_duration) == ("vod", True, 6)
    assert playlist.is_independent_segments == (fmt == "aac")
    assert "#EXT-X-START:TIME-OFFSET=0" in text
    assert len(playlist.segments) >= 3 and all(round(s.duration) <= 6 for s in playlist.segments)
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    assert timeline["complete"] is True
    assert sum(s.duration for s in playlist.segments) == pytest.approx(timeline["duration_s"], abs=1e-5)
    assert ready["duration_s"] == pytest.approx(timeline["duration_s"], abs=1e-3)

    played = await ffmpeg_play(url(client, ready["playlist_url"]))
    assert without_dts_warnings(played.errors) == []
    assert played.samples / 24000 == pytest.approx(timeline["duration_s"], abs=0.1)


async def test_a_playlist_followed_while_generating_only_grows_and_ends_as_event(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """While generating the playlist is EVENT; every reload starts with everything the last one listed (URIs
    included), segments never exceed the target, and it ends with #EXT-X-ENDLIST while staying EVENT."""
    fake.chunk_delay = 0.03  # each 2-3 s call trickles in over ~0.5 s: the playlist is reloaded many times
    client, headers, body = await started(make_client, fake)
    playlist_url = body["playlist_url"]
    versions: list[str] = []

    async def reload() -> bool:
        versions.append(await text_of(client, playlist_url))
        return "#EXT-X-ENDLIST" in versions[-1]

    await eventually(reload, timeout=30, what="the playlist to end")
    listed = [m3u8.loads(v) for v in versions]
    assert all(p.playlist_type == "event" for p in listed)
    assert any(not p.is_endlist and p.segments for p in listed), "segments were listed before the end"
    for before, after in itertools.pairwise(versions):
        assert after.startswith(before.removesuffix("#EXT-X-ENDLIST\n"))
    final = listed[-1]
    assert all(round(s.duration) <= final.target_duration for s in final.segments)
    # Ready now, and still EVENT for this file: a player may be following it (RFC 8216 §6.2.1).
    assert await text_of(client, playlist_url) == versions[-1]
    status = await wait_status(client, headers, body["content_hash"])
    # The ready file's own URL (signed to its new expiry) lists the same segments, as EVENT too.
    unsigned = re.compile(r"\?exp=\d+&sig=[\w-]+")
    assert unsigned.sub("", await text_of(client, status["playlist_url"])) == unsigned.sub("", versions[-1])


async def test_segments_carry_timestamps_that_follow_the_extinf_sums(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Each segment starts with the PRIV transportStreamTimestamp; they rise with the #EXTINF durations."""
    client, headers, body = await started(make_client, fake)
    await wait_status(client, headers, body["content_hash"])
    base = body["playlist_url"].split("?")[0].rsplit("/", 1)[0]
    playlist = m3u8.loads(await text_of(client, body["playlist_url"]))
    stamps = []
    for segment in playlist.segments:
        data = await (await client.get(f"{base}/{segment.uri}")).read()
        assert data.startswith(b"ID3")
        stamps.append(id3.read_timestamp(data))
    elapsed = itertools.accumulate([0.0] + [s.duration for s in playlist.segments[:-1]])
    assert stamps == [round(t * 90_000) for t in elapsed]
    assert all(a < b for a, b in itertools.pairwise(stamps))


async def test_ffmpeg_joining_mid_generation_follows_the_event_playlist_to_the_end(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """ffmpeg started on the playlist after its first segment is listed reloads it until #EXT-X-ENDLIST and
    decodes everything from the first word (EXT-X-START) without errors, the timeline's duration within 0.1 s."""
    fake.chunk_delay = 0.03
    client, headers, body = await started(make_client, fake)

    async def first_listed() -> bool:
        return "#EXTINF" in await text_of(client, body["playlist_url"])

    await eventually(first_listed, timeout=30, what="a first segment")
    assert (await (await client.get(f"/tts/{body['content_hash']}/status", headers=headers)).json())["status"] == (
        "generating"
    )
    played = await ffmpeg_play(url(client, body["playlist_url"]))
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    assert timeline["complete"] is True
    assert without_dts_warnings(played.errors) == []
    assert played.samples / 24000 == pytest.approx(timeline["duration_s"], abs=0.1)


async def test_the_first_segment_is_listed_before_its_upstream_call_is_done(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """A segment is listed as soon as its ~6 s of audio exist, not when the whole upstream call is done."""
    fake.clips = clips((LONG, LONG, LONG))
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release))  # 7 of its 14 s arrive, then it waits
    client = await make_client()
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="One short paragraph, one long call.")

    async def listed() -> m3u8.M3U8 | None:
        playlist = m3u8.loads(await text_of(client, body["playlist_url"]))
        return playlist if playlist.segments else None

    playlist = await eventually(listed, what="a segment listed mid-call")
    status = await (await client.get(f"/tts/{body['content_hash']}/status", headers=headers)).json()
    assert (status["status"], status["chunks_done"]) == ("generating", 0)
    assert not playlist.is_endlist and playlist.segments[0].duration == pytest.approx(6.0, abs=0.03)
    release.set()
    await wait_status(client, headers, body["content_hash"])


async def test_a_failed_attempt_never_changes_a_listed_segment(make_client: MakeClient, fake: FakeUpstream) -> None:
    """A call that fails after a served playlist listed its first segment is retried, and the audio that
    segment holds is kept (the retry follows it): listed URIs and bytes stay the same, the file still plays."""
    fake.clips = clips((LONG, LONG, LONG))
    release = asyncio.Event()
    fake.faults.append(Fault("reset_mid", pause=release))
    client = await make_client()
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="A call that breaks half way.")

    async def listed() -> str | None:
        text = await text_of(client, body["playlist_url"])
        return text if "#EXTINF" in text else None

    served = await eventually(listed, what="a segment listed mid-call")
    base = body["playlist_url"].split("?")[0].rsplit("/", 1)[0]
    first_uri = m3u8.loads(served).segments[0].uri
    first = await client.get(f"{base}/{first_uri}")
    first_bytes, first_etag = await first.read(), first.headers["ETag"]
    release.set()
    await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == 2
    final = await text_of(client, body["playlist_url"])
    assert final.startswith(served)
    again = await client.get(f"{base}/{first_uri}")
    assert (await again.read(), again.headers["ETag"]) == (first_bytes, first_etag)
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    # The kept 6 s, then the whole retried call.
    assert timeline["duration_s"] == pytest.approx(6.0 + LONG, abs=0.1)
    played = await ffmpeg_play(url(client, body["url"]))
    assert played.errors == []
    assert played.samples / 24000 == pytest.approx(timeline["duration_s"], abs=0.03)


async def test_without_a_served_playlist_a_failed_attempt_leaves_no_trace(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """The same failure with nobody listening: the file is just the retry, as long as one call."""
    fake.clips = clips((LONG, LONG, LONG))
    release = asyncio.Event()
    fake.faults.append(Fault("reset_mid", pause=release))
    client = await make_client()
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="A call that breaks half way.")
    await eventually(lambda: fake.speech_calls, what="the first call")
    release.set()
    await wait_status(client, headers, body["content_hash"])
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    assert timeline["duration_s"] == pytest.approx(LONG, abs=0.1)  # its frames: encoder delay and padding too


async def test_a_failed_generation_answers_410_for_playlist_segments_and_timeline(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """A failed generation's playlist, segments and timeline are 410 generation_failed from then on."""
    fake.faults.append(Fault(status=400, message="refused"))
    client, headers, body = await started(make_client, fake, text="Refused at once.")
    await wait_status(client, headers, body["content_hash"], "failed")
    base = f"/files/{body['file_id']}"
    query = body["playlist_url"].split("?", 1)[1]
    for path in (body["playlist_url"], f"{base}/segments/{'0' * 16}-0.mp3?{query}", f"{base}/timeline?{query}"):
        response = await client.get(path)
        assert response.status == 410
        assert (await response.json())["error"]["code"] == "generation_failed"


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "opus"])
async def test_formats_without_packed_audio_have_no_playlist(
    make_client: MakeClient, fake: FakeUpstream, fmt: str
) -> None:
    """wav, pcm, flac and opus have no HLS form: no playlist_url, and the playlist is 400 format_not_streamable."""
    text = "Short enough for one call."
    client, headers, body = await started(make_client, fake, fmt, text=text)
    assert body["playlist_url"] is None
    response = await client.get(f"/files/{body['file_id']}/playlist.m3u8", headers=headers)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "format_not_streamable"
    ready = await wait_status(client, headers, body["content_hash"])
    # Counted from the audio: sample frames (wav, pcm), the last granule position (opus), STREAMINFO (flac).
    assert ready["duration_s"] == pytest.approx(DURATIONS[FakeUpstream.clip_index(text)], abs=0.001)


async def test_segments_are_immutable_cacheable_and_answer_ranges(make_client: MakeClient, fake: FakeUpstream) -> None:
    """A segment has a strong ETag, a year of immutable caching, Range (206), If-None-Match (304) and If-Range."""
    client, headers, body = await started(make_client, fake)
    await wait_status(client, headers, body["content_hash"])
    base = body["playlist_url"].split("?")[0].rsplit("/", 1)[0]
    uri = m3u8.loads(await text_of(client, body["playlist_url"])).segments[1].uri
    whole = await client.get(f"{base}/{uri}")
    data, etag = await whole.read(), whole.headers["ETag"]
    assert whole.status == 200 and re.fullmatch(r'"[0-9a-f]{16}-1"', etag)
    assert whole.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert (whole.headers["Content-Type"], whole.headers["Accept-Ranges"]) == ("audio/mpeg", "bytes")
    assert int(whole.headers["Content-Length"]) == len(data)
    ranged = await client.get(f"{base}/{uri}", headers={"Range": "bytes=50-199"})
    assert (ranged.status, await ranged.read()) == (206, data[50:200])
    assert ranged.headers["Content-Range"] == f"bytes 50-199/{len(data)}"
    suffix = await client.get(f"{base}/{uri}", headers={"Range": "bytes=-10"})
    assert (suffix.status, await suffix.read()) == (206, data[-10:])
    assert (await client.get(f"{base}/{uri}", headers={"If-None-Match": etag})).status == 304
    stale = await client.get(f"{base}/{uri}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (stale.status, await stale.read()) == (200, data)
    beyond = await client.get(f"{base}/{uri}", headers={"Range": f"bytes={len(data)}-"})
    assert (beyond.status, beyond.headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    head = await client.head(f"{base}/{uri}")
    assert (head.status, head.headers["Content-Length"], await head.read()) == (200, str(len(data)), b"")


async def test_playback_resources_are_authorised_like_the_file(make_client: MakeClient, fake: FakeUpstream) -> None:
    """Without a signature or session: 401; another user's session: 404; a tampered signature: 401; a segment
    of another run or past the end: 404. The owner's session works without a signature."""
    client, headers, body = await started(make_client, fake)
    await wait_status(client, headers, body["content_hash"])
    other = await sign_in(client, "sk-test-bob")
    base = f"/files/{body['file_id']}"
    query = body["playlist_url"].split("?", 1)[1]
    uri = m3u8.loads(await text_of(client, body["playlist_url"])).segments[0].uri
    run = uri.split("-")[0].removeprefix("segments/")
    for path in ("/playlist.m3u8", "/timeline", f"/segments/{run}-0.mp3"):
        assert (await client.get(base + path)).status == 401
        assert (await client.get(base + path, headers=other)).status == 404
        assert (await client.get(f"{base}{path}?{query[:-2]}xx")).status == 401
        assert (await client.get(base + path, headers=headers)).status == 200
    assert (await client.get(f"{base}/segments/{'a' * 16}-0.mp3?{query}")).status == 404
    assert (await client.get(f"{base}/segments/{run}-999.mp3?{query}")).status == 404
    assert (await client.get(f"{base}/segments/{run}-0.aac?{query}")).status == 404
    assert (await client.put(f"{base}/position", json={"position_s": 1}, headers=other)).status == 404


async def test_segments_over_https_are_the_same_bytes(
    make_settings: Callable[..., Any], aiohttp_server: Any, fake: FakeUpstream, data_dir: Path
) -> None:
    """Over TLS there is no sendfile(2): a segment is copied in blocks instead, byte for byte the same."""
    fake.clips = clips()
    await asyncio.to_thread(init_tls, data_dir)
    settings = make_settings(upstream_max_chars=LIMIT)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert settings.tls_cert is not None and settings.tls_key is not None
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    server = await aiohttp_server(create_app(settings), ssl=context, host="127.0.0.1")
    base = f"https://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(ssl=False)) as session:
        headers = await sign_in(session)
        _, body = await generate(session, headers, text=document(6))
        await wait_status(session, headers, body["content_hash"])
        async with session.get(body["playlist_url"]) as r:
            playlist = m3u8.loads(await r.text())
        async with session.get(body["url"]) as r:
            audio = await r.read()
        assert len(playlist.segments) >= 2
        for segment in playlist.segments:
            async with session.get(f"/files/{body['file_id']}/{segment.uri}") as r:
                data = await r.read()
            frames = data[id3.tag_size(data[:10]) or 0 :]
            assert data.startswith(b"ID3") and len(frames) > 1000 and frames in audio
