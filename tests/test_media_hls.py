"""HLS packed audio: segments cut from a growing file, timestamps, playlists that real readers accept."""

from __future__ import annotations

import itertools
from pathlib import Path

import m3u8
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.media import adts, hls, id3, mpeg
from speccyd.media.join import Joiner
from tests.media_audio import audio, decode, decode_path

TARGET = 2.0  # short segments, so a few seconds of test audio make several


def joined_mp3() -> bytes:
    """A long text's joined mp3 (9 parts, ~8 s), as the generation code writes it."""
    parts = [audio()[f"speech64_{i % 3}"] for i in range(3)] + [audio()[f"sine64_{i % 3}"] for i in range(6)]
    joiner = Joiner("mp3", len(parts))
    cleaners = [joiner.cleaner(i) for i in range(len(parts))]
    return b"".join(c.feed(p) + c.finish() for c, p in zip(cleaners, parts, strict=True))


def joined_aac() -> bytes:
    return b"".join(audio()[f"aac_{i % 3}"] for i in range(8))


def write_segments(data: bytes, segments: list[hls.Segment], directory: Path, suffix: str) -> Path:
    """Serve segments from files, as the server would: tag + the file's byte range; returns the playlist."""
    for segment in segments:
        (directory / f"{segment.index}{suffix}").write_bytes(segment.tag() + data[segment.start : segment.end])
    playlist = hls.media_playlist(
        segments, lambda s: f"{s.index}{suffix}", target=TARGET, complete=True, event=True, independent=suffix == ".aac"
    )
    path = directory / "playlist.m3u8"
    path.write_text(playlist)
    return path


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_segments_tile_the_frames_within_the_target(fmt: str) -> None:
    """Segments cover every frame once, in order, each as long as the target allows and never longer."""
    data = joined_mp3() if fmt == "mp3" else joined_aac()
    frames = (mpeg.scan_all(data) if fmt == "mp3" else adts.scan_all(data))[1]
    segments = hls.segment_all(frames, TARGET)
    per_frame = frames[0].samples
    assert segments[0].start == frames[0].offset and segments[-1].end == frames[-1].offset + frames[-1].length
    assert all(
        a.end == b.start and b.first_sample == a.first_sample + a.samples for a, b in itertools.pairwise(segments)
    )
    assert sum(s.samples for s in segments) == sum(f.samples for f in frames)
    assert all(s.duration <= TARGET for s in segments)
    assert all(s.duration + per_frame / s.sample_rate > TARGET for s in segments[:-1])  # closed only when full
    assert [s.index for s in segments] == list(range(len(segments)))


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.integers(min_value=1, max_value=40), max_size=40))
def test_segments_do_not_depend_on_how_frames_arrive(batches: list[int]) -> None:
    """Frames added a few at a time give the same segments as all at once, and a returned segment never changes."""
    frames = mpeg.scan_all(joined_mp3())[1]
    segmenter = hls.Segmenter(TARGET)
    seen: list[hls.Segment] = []
    position = 0
    for size in batches:
        seen += segmenter.add(frames[position : position + size])
        position += size
        assert segmenter.segments == seen
    seen += segmenter.add(frames[position:]) + segmenter.finish()
    assert seen == hls.segment_all(frames, TARGET)


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_segments_decode_back_to_back_and_extinf_sums_to_the_duration(fmt: str, tmp_path: Path) -> None:
    """The served segments, each without its leading ID3 tag (as a client reads packed audio), concatenated,
    decode without errors to exactly the EXTINF sum."""
    data = joined_mp3() if fmt == "mp3" else joined_aac()
    frames = (mpeg.scan_all(data) if fmt == "mp3" else adts.scan_all(data))[1]
    segments = hls.segment_all(frames, TARGET)
    served = [s.tag() + data[s.start : s.end] for s in segments]
    assert [len(b) for b in served] == [s.size for s in segments]
    audio_only = b"".join(b[id3.tag_size(b[:10]) or 0 :] for b in served)
    decoded = decode(audio_only, tmp_path, f".{fmt}")
    assert decoded.errors == ""
    assert decoded.samples / frames[0].sample_rate == pytest.approx(sum(s.duration for s in segments), abs=1e-9)


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_ffmpeg_plays_the_playlist_from_files(fmt: str, tmp_path: Path) -> None:
    """ffmpeg's HLS demuxer reads the playlist and its segments to the end: every sample, no decode error."""
    data = joined_mp3() if fmt == "mp3" else joined_aac()
    frames = (mpeg.scan_all(data) if fmt == "mp3" else adts.scan_all(data))[1]
    segments = hls.segment_all(frames, TARGET)
    played = decode_path(write_segments(data, segments, tmp_path, f".{fmt}"))
    # ffmpeg 5.1's HLS demuxer applies a new segment's PRIV time to the packets its mp3 reader had already
    # buffered, so its muxer warns of timestamps going back a frame at some boundaries; the samples are all
    # there and in order (the PRIV values are right: see the timestamp test). ADTS packets are not buffered.
    complaints = [line for line in played.errors.splitlines() if "non monotonically increasing dts" not in line]
    assert complaints == []
    assert played.samples == sum(s.samples for s in segments)


def test_priv_timestamps_rise_with_the_extinf_sums() -> None:
    """Each segment's PRIV timestamp is 90 kHz times the EXTINF durations before it, from START_PTS."""
    data = joined_mp3()
    segments = hls.segment_all(mpeg.scan_all(data)[1], TARGET)
    stamps = [id3.read_timestamp(s.tag() + data[s.start : s.end]) for s in segments]
    elapsed = [sum(s.duration for s in segments[:i]) for i in range(len(segments))]
    assert stamps == [hls.START_PTS + round(t * 90_000) for t in elapsed]
    assert all(a < b for a, b in itertools.pairwise(stamps)) and stamps[0] == hls.START_PTS


@pytest.mark.parametrize(
    ("complete", "event", "kind"), [(False, True, "EVENT"), (True, True, "EVENT"), (True, False, "VOD")]
)
def test_playlist_parses_with_the_m3u8_package(complete: bool, event: bool, kind: str) -> None:
    """An independent reader (m3u8) sees the version, target, sequence, type, durations, URIs and end."""
    data = joined_aac()
    segments = hls.segment_all(adts.scan_all(data)[1], TARGET)
    text = hls.media_playlist(
        segments, lambda s: f"seg/{s.index}.aac?sig=x", target=TARGET, complete=complete, event=event, independent=True
    )
    playlist = m3u8.loads(text)
    assert (playlist.version, playlist.target_duration, playlist.media_sequence) == (3, 2, 0)
    assert (playlist.playlist_type, playlist.is_endlist, playlist.is_independent_segments) == (
        kind.lower(),
        complete,
        True,
    )
    assert [s.uri for s in playlist.segments] == [f"seg/{i}.aac?sig=x" for i in range(len(segments))]
    assert [s.duration for s in playlist.segments] == pytest.approx([s.duration for s in segments], abs=1e-6)
    assert all(round(s.duration) <= playlist.target_duration for s in playlist.segments)


def test_an_event_playlist_only_grows() -> None:
    """Rendered again with more segments, an EVENT playlist starts with everything it said before."""
    segments = hls.segment_all(mpeg.scan_all(joined_mp3())[1], TARGET)

    def render(count: int, complete: bool = False) -> str:
        return hls.media_playlist(segments[:count], lambda s: f"{s.index}.mp3", complete=complete, event=True)

    versions = [render(n) for n in range(len(segments) + 1)] + [render(len(segments), complete=True)]
    assert all(b.startswith(a) for a, b in itertools.pairwise(versions))
    assert "#EXT-X-INDEPENDENT-SEGMENTS" not in versions[-1]  # mp3 frames borrow from the previous segment


def test_target_duration_and_blocking_reload() -> None:
    """TARGETDURATION is the rounded target, fixed up front; blocking reload is announced only when asked for."""
    assert [hls.target_duration_tag(t) for t in (1.0, 2.0, 5.5, 6.0, 6.4)] == [1, 2, 6, 6, 6]
    text = hls.media_playlist([], str, complete=False, event=True, can_block_reload=True)
    assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES" in text and "#EXT-X-TARGETDURATION:6" in text
    assert "SERVER-CONTROL" not in hls.media_playlist([], str, complete=True, event=False)
    with pytest.raises(ValueError, match="VOD"):
        hls.media_playlist([], str, complete=False, event=False)
    with pytest.raises(ValueError, match="at least 1 second"):
        hls.Segmenter(0.5)
