"""Gapless joins: mp3 parts lose the whole frames of their encoder delay and padding, and still decode cleanly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.media import adts, mp3join, mpeg
from speccyd.media.join import Joiner
from tests.media_audio import audio, decode

ORDER = [0, 1, 2, 1, 0, 2]  # parts of a long text, some clips repeated as the fake upstream does


def join(parts: list[bytes], fmt: str = "mp3") -> tuple[bytes, list[object]]:
    """The joined file the Joiner makes of `parts`, and each part's cleaner."""
    joiner = Joiner(fmt, len(parts))
    cleaners = [joiner.cleaner(i) for i in range(len(parts))]
    joined = b"".join(c.feed(p) + c.finish() for c, p in zip(cleaners, parts, strict=True))
    return joined, list(cleaners)


@pytest.mark.parametrize(
    ("clip", "per_frame"), [("sine64", 576), ("speech64", 576), ("speech160", 576), ("stereo128", 1152)]
)
def test_joined_mp3_decodes_to_the_sum_of_its_parts(clip: str, per_frame: int, tmp_path: Path) -> None:
    """N parts joined decode, without a decoder error, to the sum of the parts decoded alone within half a frame
    per part, and to exactly the kept frames' samples (what the timeline counts)."""
    clips = [data for name, data in audio().items() if name.startswith(clip + "_")]
    parts = [clips[i % len(clips)] for i in ORDER]
    alone = sum(decode(p, tmp_path).samples for p in parts)
    joined, cleaners = join(parts)
    whole = decode(joined, tmp_path)
    assert whole.errors == ""
    assert abs(whole.samples - alone) <= per_frame / 2 * len(parts)
    assert whole.samples == sum(c.samples for c in cleaners)  # type: ignore[attr-defined]
    frames = mpeg.scan_all(joined)[1]
    assert whole.samples == len(frames) * per_frame


def test_without_trimming_each_part_adds_its_delay_and_padding(tmp_path: Path) -> None:
    """What the fix is for: frames concatenated as they are decode ~1600 samples (68 ms at 24 kHz) long per part."""
    parts = [audio()[f"sine64_{i}"] for i in ORDER]
    alone = sum(decode(p, tmp_path).samples for p in parts)
    raw = b"".join(f.data for p in parts for f in mpeg.scan_all(p)[1])
    excess = (decode(raw, tmp_path).samples - alone) / len(parts)
    assert 1100 < excess < 1700


@pytest.mark.parametrize("name", ["sine64_2", "speech64_1", "stereo128_0", "mono12"])
@pytest.mark.parametrize("drop", [1, 2, 5])
def test_repacked_frames_decode_bit_exactly(name: str, drop: int, tmp_path: Path) -> None:
    """A frame whose borrowed main data is moved into its own (bigger) slot decodes to the very same samples."""
    frames = mpeg.scan_all(audio()[name])[1]
    packer = mp3join.FramePacker(drop)
    out = [data for frame in frames for data in packer.push(frame)] + packer.flush()
    assert packer.rewritten >= 1 and packer.bumped == packer.rewritten
    original = b"".join(f.data for f in frames)
    # With the dropped frames put back in front, the decoder has all the history it had: same PCM.
    repacked = b"".join(f.data for f in frames[:drop]) + b"".join(out)
    assert decode(repacked, tmp_path).pcm == decode(original, tmp_path).pcm
    assert len(out) == len(frames) - drop


def test_at_the_top_bitrate_a_silent_carrier_frame_holds_the_reservoir(tmp_path: Path) -> None:
    """At 160 kbit/s no frame can grow, so the last dropped frame becomes a silent frame that carries what the
    first kept frame borrows; later frames decode exactly as before."""
    data = audio()["speech160_0"]
    frames = mpeg.scan_all(data)[1]
    with pytest.raises(mp3join.RepackError):
        packer = mp3join.FramePacker(2)
        for frame in frames:
            packer.push(frame)
    trimmer = mp3join.PartTrimmer(keep_id3=False)
    out = trimmer.feed(data) + trimmer.finish()
    stats = trimmer.stats
    assert (stats.plan.lead, stats.rewritten, stats.bumped) == (1, 1, 0)
    assert stats.frames_out == stats.frames_in - stats.plan.lead - stats.plan.trail
    decoded = decode(out, tmp_path)
    full = decode(b"".join(f.data for f in frames), tmp_path).pcm
    assert decoded.errors == ""
    settled = 3 * 576 * 2  # the decoder's overlap and filterbank memory settle within three frames
    tail = decoded.pcm[settled:]
    assert full.find(tail) == (2 + 2) * 576 * 2  # output frame 3 is input frame 2 + 3 - 1 (carrier replaced 1)


def crc_protected(frames: list[mpeg.Frame]) -> bytes:
    """The frames as a CRC-protected stream: protection bit cleared, CRC-16 inserted after each header."""
    out = bytearray()
    for frame in frames:
        header = bytearray(frame.data[:4])
        header[1] &= 0xFE
        side = frame.data[4 : frame.header.payload_offset]
        crc = mp3join.crc16(bytes(header[2:4]) + side).to_bytes(2, "big")
        out += header + crc + frame.data[4 : frame.length - 2]  # 2 bytes shorter payload: the end is padding
    return bytes(out)


def test_crc_protected_frames_keep_a_valid_crc(tmp_path: Path) -> None:
    """Rewritten frames of a CRC-protected stream get a recomputed CRC that ffmpeg's crccheck accepts."""
    frames = mpeg.scan_all(audio()["sine64_2"])[1]
    check = ("-err_detect", "crccheck+explode")
    protected = crc_protected(frames)
    assert decode(protected, tmp_path, extra=check).errors == ""  # the test's own CRCs are right
    parsed = mpeg.scan_all(protected)[1]
    assert parsed[0].header.crc
    packer = mp3join.FramePacker(2)
    out = b"".join(data for frame in parsed for data in packer.push(frame)) + b"".join(packer.flush())
    assert packer.rewritten == 1
    assert decode(out, tmp_path, extra=check).errors == ""


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=20))
def test_trimming_does_not_depend_on_packet_boundaries(cuts: list[int]) -> None:
    """A part cut into any pieces is trimmed to the same bytes as when it arrives whole."""
    data = audio()["speech64_0"]
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    pieces = mp3join.PartTrimmer(keep_id3=True)
    split = b"".join(pieces.feed(data[a:b]) for a, b in itertools.pairwise(bounds)) + pieces.finish()
    whole = mp3join.PartTrimmer(keep_id3=True)
    assert split == whole.feed(data) + whole.finish()


def test_plan_rounds_the_excess_to_whole_frames() -> None:
    """libmp3lame at 24 kHz: 1105 samples before the audio and up to padding - 529 after; the nearest frames go."""
    info = mpeg.InfoTag("Info", 57, 11136, "Lavc59.37", 576, 1056)
    plan = mp3join.plan(info, 576)
    assert (plan.lead, plan.trail, plan.excess, plan.residual) == (2, 1, 1632, -96)
    assert mp3join.plan(None, 576) == mp3join.Plan(0, 0, 0, 576)
    assert mp3join.plan(mpeg.InfoTag("Info", None, None, "LAME3.100", 576, 1056), 576).trail == 0


def test_joined_aac_decodes_to_exactly_the_sum_of_its_parts(tmp_path: Path) -> None:
    """ADTS cannot signal priming, so a part decodes to all its frames alone and joined: the join is exact."""
    parts = [audio()[f"aac_{i}"] for i in ORDER]
    alone = [decode(p, tmp_path, ".aac").samples for p in parts]
    assert alone == [len(adts.scan_all(p)[1]) * 1024 for p in parts]
    joined, _ = join(parts, "aac")
    whole = decode(joined, tmp_path, ".aac")
    assert whole.errors == "" and whole.samples == sum(alone)
