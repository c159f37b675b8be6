"""The read-along timeline and chapters: pieces that tile the text, times counted from the audio produced."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.generation.textplan import headings, plan_text, title_of
from speccyd.media import id3
from tests.conftest import AppClient, decode, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.playback_helpers import clips
from tests.test_playback import LIMIT, document

MakeClient = Callable[..., Awaitable[AppClient]]
FRAME_SAMPLES = {"mp3": 576, "aac": 1024, "wav": 1, "pcm": 1}  # 24 kHz mono: MPEG-2 Layer III, AAC LC

PIECES = st.sampled_from(
    [
        "word", "Hello", "world.", "Really?", " ", "\n", "\n\n", "\t", ", ", "# Title\n", "\n## Part two\n",
        "###### Deep\n", "#not a heading", "```\n# comment in code\n```\n", "~~~\n## also code\n~~~\n",
        "  # indented heading\n", "日本語。", "👨‍👩‍👧‍👦", "e\u0301", "x" * 30, "…",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=60).map("".join), st.integers(min_value=1, max_value=80))
def test_pieces_tile_the_text_and_every_heading_starts_one(text: str, limit: int) -> None:
    """Tiles cover the text with no gap and no overlap; each piece lies in its tile within the limit; every
    heading outside code fences starts a piece, and its chapter points at it."""
    if not text.strip():
        return
    plan = plan_text(text, limit)
    tiles = plan.tiles(len(text))
    assert tiles[0][0] == 0 and tiles[-1][1] == len(text)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(tiles))
    for (start, end), (a, b) in zip(tiles, plan.pieces, strict=True):
        assert start <= a < b <= end and text[a:b].strip()
        assert not text[start:a].strip() and not text[b:end].strip(), "only whitespace is left out of a piece"
        assert b - a <= limit or len(plan.pieces) == 1 or all(len(c) == 1 for c in text[a:b])
    starts = {a for a, _ in plan.pieces}
    found = headings(text)[:255]
    assert [c.title for c in plan.chapters] == [h.title for h in found]
    for chapter, heading in zip(plan.chapters, found, strict=True):
        assert chapter.text_start == tiles[chapter.piece][0]
        first = heading.start + len(text[heading.start :]) - len(text[heading.start :].lstrip())
        assert first in starts or chapter.piece == 0
    assert plan.title == (found[0].title if found else title_of(text))


def test_past_255_headings_are_read_as_text() -> None:
    """A CTOC frame names at most 255 chapters, and each chapter costs an upstream call: a text of 1,000 one-line
    headings has 255 chapters and about as many pieces, not 1,000."""
    text = "\n".join(f"# Heading {i}" for i in range(1000))
    plan = plan_text(text, 1000)
    assert len(plan.chapters) == 255 and [c.piece for c in plan.chapters] == list(range(255))
    assert len(plan.pieces) <= 255 + len(text[plan.pieces[254][0] :]) // 1000 + 2


def test_headings_skip_code_and_need_a_space() -> None:
    """ATX headings: 1-6 #'s then a space; not '#tag', not 7 #'s, not inside ``` or ~~~ fences; closing #'s go."""
    text = "# One\n#tag\n####### seven\n```\n# code\n```\n   ### Three ###\n~~~~\n## fenced\n~~~~\n## Two\n"
    assert [(h.level, h.title) for h in headings(text)] == [(1, "One"), (3, "Three"), (2, "Two")]
    assert title_of("\n\n  A first line  \nmore") == "A first line"
    assert title_of("x" * 500).endswith("…") and len(title_of("x" * 500) or "") == 200


@pytest.mark.parametrize("fmt", ["mp3", "aac", "wav", "pcm"])
async def test_timeline_tiles_the_text_and_adds_up_to_the_decoded_audio(
    make_client: MakeClient, fake: FakeUpstream, fmt: str, tmp_path: Path
) -> None:
    """Segments tile the text; audio times strictly increase with no gap; their total is what the stored
    file decodes to, within a frame per segment; chapters sit where their headings' pieces start."""
    fake.clips = clips()
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    text = document()
    _, body = await generate(client, headers, text=text, format=fmt)
    await wait_status(client, headers, body["content_hash"])
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    segments = timeline["segments"]
    assert len(segments) == len(fake.speech_calls) >= 12  # a paragraph a call, headings with theirs
    assert segments[0]["text_start"] == 0 and segments[-1]["text_end"] == len(text)
    assert all(a["text_end"] == b["text_start"] for a, b in itertools.pairwise(segments))
    assert all(s["audio_start_s"] < s["audio_end_s"] for s in segments)
    assert all(a["audio_end_s"] == b["audio_start_s"] for a, b in itertools.pairwise(segments))
    assert segments[-1]["audio_end_s"] == timeline["duration_s"]
    data = await (await client.get(body["url"])).read()
    decoded = decode(data, fmt, tmp_path)
    assert decoded.errors == ""
    assert decoded.seconds == pytest.approx(timeline["duration_s"], abs=FRAME_SAMPLES[fmt] / 24000 * len(segments))
    # One chapter per heading, at its heading's first character and its piece's audio.
    titles = [h.title for h in headings(text)]
    assert [c["title"] for c in timeline["chapters"]] == titles
    by_text = {s["text_start"]: s["audio_start_s"] for s in segments}
    for chapter in timeline["chapters"]:
        assert text[chapter["text_start"] :].lstrip().startswith("#")
        assert chapter["audio_start_s"] == by_text[chapter["text_start"]]


async def test_a_chaptered_mp3_carries_its_title_and_chapters_for_podcast_players(
    make_client: MakeClient, fake: FakeUpstream, tmp_path: Path
) -> None:
    """The stored mp3 starts with TIT2 and CTOC/CHAP frames that ffprobe reads: the meta title, and every
    chapter at its timeline time (ms), each ending where the next begins and the last at the end."""
    fake.clips = clips()
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=document())
    await wait_status(client, headers, body["content_hash"])
    meta = await (await client.get(f"/files/{body['file_id']}/meta", headers=headers)).json()
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    path = tmp_path / "chapters.mp3"
    path.write_bytes(await (await client.get(body["url"])).read())
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-of", "json", str(path)],
        capture_output=True, check=True, timeout=60, text=True,
    )  # fmt: skip
    info = json.loads(probe.stdout)
    assert meta["title"] == "The speccyd playback spec" == info["format"]["tags"]["title"]
    chapters = info["chapters"]
    assert [c["tags"]["title"] for c in chapters] == [c["title"] for c in timeline["chapters"]]
    starts = [c["audio_start_s"] for c in timeline["chapters"]]
    assert [float(c["start_time"]) for c in chapters] == pytest.approx(starts, abs=0.001)
    assert [float(c["end_time"]) for c in chapters] == pytest.approx([*starts[1:], timeline["duration_s"]], abs=0.001)


async def test_a_chaptered_mp3_downloads_whole_once_its_tag_is_final_while_hls_plays_at_once(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """A progressive download of a chaptered mp3 still generating waits for the times in its tag, then is the
    stored file byte for byte; meanwhile its playlist already lists segments."""
    fake.clips = clips()
    client = await make_client(upstream_max_chars=LIMIT)
    release = asyncio.Event()
    text = document()
    fake.faults.append(Fault("pause_mid", pause=release, match="Paragraph 9 "))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=text)
    pending = asyncio.ensure_future(client.get(body["url"]))

    async def listed() -> bool:
        return "#EXTINF" in await (await client.get(body["playlist_url"])).text()

    await eventually(listed, what="segments listed while the download waits")
    assert not pending.done()
    release.set()
    response = await pending
    streamed = await response.read()
    assert response.headers["Content-Length"] == str(len(streamed))
    assert streamed == await (await client.get(body["url"])).read()
    size = id3.tag_size(streamed[:10]) or 0
    assert size and b"CHAP" in streamed[:size] and b"CTOC" in streamed[:size]


async def test_the_timeline_while_generating_lists_a_growing_prefix(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """While generating, complete is false and the segments tile a prefix of the text that only grows."""
    fake.clips = clips()
    fake.chunk_delay = 0.03
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=document())
    seen: list[dict[str, Any]] = []

    async def poll() -> bool:
        seen.append(await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json())
        return bool(seen[-1]["complete"])

    await eventually(poll, timeout=30, what="a complete timeline")
    partial = [t for t in seen if not t["complete"]]
    assert any(len(t["segments"]) > 0 for t in partial)
    for before, after in itertools.pairwise(seen):
        assert after["segments"][: len(before["segments"])] == before["segments"]
        assert after["duration_s"] >= before["duration_s"]
    for t in partial:
        assert t["segments"] == [] or t["segments"][0]["text_start"] == 0


async def test_a_file_from_before_timelines_gets_one_from_its_audio(
    make_client: MakeClient, fake: FakeUpstream, settings_db: Any
) -> None:
    """A ready file with no stored timeline (made by an older speccyd) gets one counted from its audio, in the
    background after start-up (or on first use): one segment for the whole text, its duration in the library,
    and a playable playlist."""
    fake.clips = clips()
    client = await make_client()
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="Made before timelines were kept.")
    await wait_status(client, headers, body["content_hash"])
    # What an older version left: no timeline, no duration (this data dir's database, as the CLI opens it).
    await settings_db.write(lambda db: db.execute("DELETE FROM timelines"))
    await settings_db.write(lambda db: db.execute("UPDATE audio_files SET duration_s = NULL"))
    fresh = await make_client()  # a restarted server: nothing in memory

    # It counts such files in the background after start-up: the library shows their length unasked.
    async def counted() -> Any:
        entry = (await (await fresh.get("/files", headers=headers)).json())["files"][0]
        return entry["duration_s"]

    assert await eventually(counted, what="the backfilled duration") > 2
    timeline = await (await fresh.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    assert len(timeline["segments"]) == 1 and timeline["segments"][0]["text_end"] == len(
        "Made before timelines were kept."
    )
    assert timeline["duration_s"] > 2
    library = await (await fresh.get("/files", headers=headers)).json()
    assert library["files"][0]["duration_s"] == pytest.approx(timeline["duration_s"], abs=1e-3)
    assert "#EXT-X-ENDLIST" in await (await fresh.get(body["playlist_url"])).text()


async def test_the_timeline_and_playlist_of_a_ready_file_survive_a_restart(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """A restarted server (nothing in memory) serves the same timeline and, at the same URL, the same playlist
    and segment bytes: they are read from the database, not recounted."""
    fake.clips = clips()
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=document())
    await wait_status(client, headers, body["content_hash"])
    timeline = await (await client.get(f"/files/{body['file_id']}/timeline", headers=headers)).json()
    playlist = await (await client.get(body["playlist_url"])).text()
    uri = next(line for line in playlist.splitlines() if line.startswith("segments/"))
    segment = await (await client.get(f"/files/{body['file_id']}/{uri}")).read()
    restarted = await make_client(upstream_max_chars=LIMIT)
    assert await (await restarted.get(f"/files/{body['file_id']}/timeline", headers=headers)).json() == timeline
    assert await (await restarted.get(body["playlist_url"])).text() == playlist
    assert await (await restarted.get(f"/files/{body['file_id']}/{uri}")).read() == segment
    assert len(fake.speech_calls) == len(timeline["segments"])  # nothing generated again
