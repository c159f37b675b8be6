"""ID3v2.4 tags: syncsafe sizes, the packed-audio timestamp, title and chapters that ffprobe reads back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from speccyd.media import id3, mpeg
from speccyd.media.join import Joiner
from tests.media_audio import audio


def test_syncsafe_sizes_round_trip_and_never_set_the_top_bit() -> None:
    """Sizes are 7 bits per byte (no false MPEG sync inside a tag) and read back the same."""
    for value in (0, 1, 127, 128, 255, 16_383, 2**21, 2**28 - 1):
        raw = id3.syncsafe(value)
        assert len(raw) == 4 and all(b < 0x80 for b in raw) and id3.read_syncsafe(raw) == value
    with pytest.raises(ValueError, match="syncsafe"):
        id3.syncsafe(2**28)


def test_tag_size_reads_headers_and_waits_for_ten_bytes() -> None:
    """tag_size: header plus body (plus footer), 0 for no tag, None while a prefix of one is all there is."""
    tag = id3.tag([id3.title_frame("Hello")])
    assert id3.tag_size(tag[:10]) == len(tag)
    assert id3.tag_size(b"ID") is None and id3.tag_size(b"") is None and id3.tag_size(b"\xff\xf3") == 0
    assert id3.tag_size(b"ID3\x04\x00\x00\x00\x00\x80\x00") == 0  # a size byte with its top bit set: not a tag
    assert id3.tag_size(b"ID3\x04\x00\x10" + id3.syncsafe(5)) == 25  # footer flag: 10 more bytes


def test_timestamp_tag_is_the_rfc_8216_priv_frame() -> None:
    """73 bytes: a v2.4 header, PRIV owned by com.apple.streaming.transportStreamTimestamp, 8 bytes of 33 bits."""
    tag = id3.timestamp_tag(2**33 + 123)  # wraps like an MPEG-2 PTS
    assert len(tag) == id3.TIMESTAMP_TAG_SIZE == 73
    assert tag.startswith(b"ID3\x04\x00\x00") and tag[10:14] == b"PRIV"
    assert tag[20:65] == b"com.apple.streaming.transportStreamTimestamp\0"
    assert tag[65:] == (123).to_bytes(8, "big")
    assert id3.read_timestamp(tag + b"\xff\xf3") == 123 and id3.read_timestamp(b"\xff\xf3\x84\xc4") is None


def test_chapter_frames_follow_the_addendum() -> None:
    """CHAP: element id, start/end ms, offsets $FFFFFFFF, embedded TIT2; CTOC: top-level, ordered, children."""
    chap = id3.chap_frame("chp0", 1500, 4200, "Intro")
    body = chap[10:]
    assert chap[:4] == b"CHAP" and body.startswith(b"chp0\0")
    assert body[5:21] == (1500).to_bytes(4, "big") + (4200).to_bytes(4, "big") + b"\xff" * 8
    assert body[21:25] == b"TIT2" and body.endswith(b"\x03Intro")
    toc = id3.ctoc_frame("toc", ["chp0", "chp1"])
    assert toc[10:] == b"toc\0" + bytes([0x03, 2]) + b"chp0\0chp1\0"


def test_a_reserved_tag_is_replaced_by_one_of_the_same_size() -> None:
    """A tag reserved from the titles alone has the final chapter tag's exact size, whatever the times."""
    chapters = [id3.Chapter("Über alles", 0, 0), id3.Chapter("Zwei", 0, 0)]
    size = len(id3.chapter_tag("Title", chapters)) + 64
    placeholder = id3.tag([id3.title_frame("Title")], size=size)
    final = id3.chapter_tag(
        "Title", [id3.Chapter("Über alles", 0, 61_000), id3.Chapter("Zwei", 61_000, 99_999)], size=size
    )
    assert len(placeholder) == len(final) == size == id3.tag_size(final[:10])
    with pytest.raises(ValueError, match="more than the reserved"):
        id3.chapter_tag("Title", chapters, size=20)


def test_ffprobe_shows_the_title_and_chapters_of_a_joined_mp3(tmp_path: Path) -> None:
    """A joined mp3 whose tag holds TIT2, CTOC and CHAP frames timed from frame counts shows them in ffprobe."""
    parts = [audio()[f"speech64_{i}"] for i in range(3)]
    joiner = Joiner("mp3", len(parts))
    cleaners = [joiner.cleaner(i) for i in range(len(parts))]
    bodies = [c.feed(p) + c.finish() for c, p in zip(cleaners, parts, strict=True)]
    bodies[0] = bodies[0][id3.tag_size(bodies[0][:10]) or 0 :]  # the first part's own tag gives way
    ends = [0]
    for cleaner in cleaners:
        ends.append(ends[-1] + cleaner.samples)  # type: ignore[attr-defined]
    titles = ["Introduction", "Chapter two: ünïcödé", "The end"]
    chapters = [id3.Chapter(t, ends[i] * 1000 // 24000, ends[i + 1] * 1000 // 24000) for i, t in enumerate(titles)]
    path = tmp_path / "joined.mp3"
    path.write_bytes(id3.chapter_tag("A spec, read aloud", chapters) + b"".join(bodies))
    assert len(mpeg.scan_all(path.read_bytes())[1]) * 576 == ends[-1]
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    shown = json.loads(probe.stdout)
    assert shown["format"]["tags"]["title"] == "A spec, read aloud"
    assert [c["tags"]["title"] for c in shown["chapters"]] == titles
    assert [(c["start"], c["end"]) for c in shown["chapters"]] == [(c.start_ms, c.end_ms) for c in chapters]
