"""mp3 and ADTS frame parsing on real ffmpeg output: headers, Info tags, and scanning a growing stream."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.media import adts, mpeg
from tests.media_audio import audio, decode, ffprobe_packets

MP3 = ["sine64_2", "speech160_0", "stereo128_1", "mono12"]


def feed_in_pieces(scanner: mpeg.FrameScanner | adts.FrameScanner, data: bytes, cuts: list[int]) -> list[object]:
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    found: list[object] = []
    for a, b in itertools.pairwise(bounds):
        found += scanner.feed(data[a:b])
    return found + scanner.finish()


@pytest.mark.parametrize("name", MP3)
def test_mp3_frame_count_matches_ffprobe(name: str, tmp_path: Path) -> None:
    """The scanner finds as many audio frames as ffprobe reports packets, the Info frame set aside."""
    data = audio()[name]
    scanner, frames = mpeg.scan_all(data)
    assert len(frames) == ffprobe_packets(data, tmp_path, ".mp3")
    assert scanner.info is not None and scanner.info.kind == "Info" and scanner.info.frames == len(frames)
    assert (scanner.skipped, scanner.truncated, scanner.id3v1) == (0, 0, False)


@pytest.mark.parametrize(
    ("name", "version", "rate", "spf", "mode"),
    [
        ("sine64_0", "2", 24000, 576, mpeg.ChannelMode.MONO),
        ("stereo128_0", "1", 44100, 1152, mpeg.ChannelMode.JOINT_STEREO),
        ("mono12", "2.5", 12000, 576, mpeg.ChannelMode.MONO),
    ],
)
def test_mp3_header_fields(name: str, version: str, rate: int, spf: int, mode: mpeg.ChannelMode) -> None:
    """Version, sample rate, samples per frame, channel mode and frame length come out of the header."""
    _, frames = mpeg.scan_all(audio()[name])
    header = frames[0].header
    assert (header.version, header.sample_rate, header.samples, header.channel_mode, header.crc) == (
        version,
        rate,
        spf,
        mode,
        False,
    )
    assert all(f.length == f.header.length for f in frames)
    assert all(b.offset == a.offset + a.length for a, b in itertools.pairwise(frames))


@pytest.mark.parametrize("name", MP3)
def test_lame_tag_delay_and_padding_predict_ffmpegs_length(name: str, tmp_path: Path) -> None:
    """The LAME tag's delay and padding give exactly the number of samples ffmpeg decodes."""
    data = audio()[name]
    scanner, frames = mpeg.scan_all(data)
    assert scanner.info is not None and scanner.info.delay == 576 and scanner.info.padding is not None
    expected = mpeg.decoded_samples(len(frames), frames[0].samples, scanner.info)
    assert decode(data, tmp_path).samples == expected
    assert mpeg.decoded_samples(len(frames), frames[0].samples, None) == len(frames) * frames[0].samples


def test_first_frame_follows_the_id3_tag_and_info_frame() -> None:
    """A leading ID3v2 tag is skipped and the Info frame is reported apart, not as audio."""
    data = audio()["sine64_0"]
    scanner, frames = mpeg.scan_all(data)
    assert data.startswith(b"ID3") and scanner.id3v2_size > 10
    assert scanner.info_frame is not None and scanner.info_frame.offset == scanner.id3v2_size
    assert frames[0].offset == scanner.id3v2_size + scanner.info_frame.length


def test_garbage_between_frames_is_skipped() -> None:
    """Bytes between frames, even ones that look like a sync word, are skipped; every real frame is kept."""
    _, frames = mpeg.scan_all(audio()["sine64_1"])
    junk = b"junk \xff\xf3\x84\xc0 more \xff\xfb junk"  # holds a header, but no frame follows it
    data = b"".join(f.data + (junk if i % 7 == 3 else b"") for i, f in enumerate(frames))
    scanner, again = mpeg.scan_all(data)
    assert [f.data for f in again] == [f.data for f in frames]
    assert scanner.skipped == len(junk) * sum(1 for i in range(len(frames)) if i % 7 == 3)


def test_truncated_last_frame_and_id3v1_tag() -> None:
    """At the end a cut-short frame is dropped and counted; a final ID3v1 tag is recognised, not audio."""
    data = audio()["sine64_0"]
    _, frames = mpeg.scan_all(data)
    scanner, cut = mpeg.scan_all(data[:-50])
    assert len(cut) == len(frames) - 1 and scanner.truncated == frames[-1].length - 50
    tagged, found = mpeg.scan_all(data + b"TAG" + bytes(125))
    assert [f.data for f in found] == [f.data for f in frames] and tagged.id3v1


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=40_000), max_size=30), garbage=st.binary(max_size=40))
def test_mp3_pieces_give_the_same_frames_as_one_feed(cuts: list[int], garbage: bytes) -> None:
    """However the bytes are split into pieces, the scanner returns the same frames as from one piece."""
    _, frames = mpeg.scan_all(audio()["sine64_1"])
    data = b"".join(f.data for f in frames[:10]) + garbage + b"".join(f.data for f in frames[10:]) + b"TAG" + bytes(125)
    whole = mpeg.scan_all(data)[1]
    assert feed_in_pieces(mpeg.FrameScanner(), data, cuts) == whole
    assert len(whole) >= len(frames) - 2  # garbage may spoil at most the frame it lands next to


@pytest.mark.parametrize("name", ["aac_0", "aac_2"])
def test_adts_frames_match_ffprobe(name: str, tmp_path: Path) -> None:
    """ADTS frames: the count ffprobe reports, 1024 samples each, the 24 kHz rate and LC profile."""
    data = audio()[name]
    scanner, frames = adts.scan_all(data)
    assert len(frames) == ffprobe_packets(data, tmp_path, ".aac")
    header = frames[0].header
    assert (header.sample_rate, header.samples, header.blocks, adts.PROFILES[header.profile]) == (24000, 1024, 1, "LC")
    assert (header.protected, header.channel_configuration) == (False, 1)
    assert decode(data, tmp_path, ".aac").samples == sum(f.samples for f in frames)
    assert scanner.skipped == 0


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=30))
def test_adts_pieces_give_the_same_frames_as_one_feed(cuts: list[int]) -> None:
    """ADTS scanning, too, does not depend on how the bytes arrive."""
    data = audio()["aac_1"]
    assert feed_in_pieces(adts.FrameScanner(), data, cuts) == adts.scan_all(data)[1]
