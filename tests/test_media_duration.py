"""Sample counts of wav, Ogg Opus and FLAC; mp3 header cleaning; segmenter rewinds: checked against ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

from speccyd.media import duration, hls, mpeg
from speccyd.media.join import Joiner, Mp3HeadCleaner
from tests.media_audio import audio, decode
from tests.playback_helpers import clips


def decoded_samples(data: bytes, suffix: str, tmp_path: Path, rate: int) -> int:
    source = tmp_path / f"probe{suffix}"
    source.write_bytes(data)
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(source), "-f", "s16le", "-ac", "1", "-ar", str(rate), "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return len(result.stdout) // 2


def test_opus_length_is_the_last_granule_minus_pre_skip(tmp_path: Path) -> None:
    """An Ogg Opus file's samples (48 kHz) are exactly what ffmpeg decodes from it."""
    for data in clips()["opus"]:
        counted = duration.opus_samples(data[: 64 * 1024], data[-duration.TAIL_BYTES :])
        assert counted == decoded_samples(data, ".ogg", tmp_path, duration.OPUS_RATE)


def test_flac_length_from_streaminfo_or_from_its_last_frame(tmp_path: Path) -> None:
    """FLAC's STREAMINFO total, and, when a streaming encoder left it 0, the last frame's position and size."""
    for data in clips()["flac"]:
        expected = decoded_samples(data, ".flac", tmp_path, 24000)
        assert duration.flac_samples(data[:4096], data[-duration.TAIL_BYTES :]) == (24000, expected)
        streamed = bytearray(data)
        packed = int.from_bytes(streamed[18:26], "big") & ~((1 << 36) - 1)  # total samples unknown: 0
        streamed[18:26] = packed.to_bytes(8, "big")
        assert duration.flac_samples(bytes(streamed[:4096]), bytes(streamed[-duration.TAIL_BYTES :])) == (
            24000,
            expected,
        )


def test_wav_layout_finds_the_samples_after_other_chunks() -> None:
    """The data chunk is found past ffmpeg's LIST chunk; rate and sample size come from fmt."""
    data = clips()["wav"][0]
    layout = duration.wav_layout(data)
    assert layout is not None and data[layout.data_offset - 8 : layout.data_offset - 4] == b"data"
    assert (layout.sample_rate, layout.block_align, layout.channels) == (24000, 2, 1)
    assert duration.wav_layout(data[: layout.data_offset - 1]) is None  # not all there yet


def test_a_single_mp3_keeps_only_its_frames_and_decodes_to_them(tmp_path: Path) -> None:
    """One upstream mp3 loses its ID3 tag and Info frame, whatever its packets; what is left is its frames,
    which ffmpeg decodes to exactly frames x 576 samples (what HLS segments and the timeline count)."""
    data = audio()["speech64_0"]
    scanner, frames = mpeg.scan_all(data)
    assert scanner.info_frame is not None
    cleaner = Mp3HeadCleaner()
    cleaned = b"".join(cleaner.feed(data[i : i + 333]) for i in range(0, len(data), 333)) + cleaner.finish()
    assert cleaned == data[frames[0].offset :]
    assert decode(cleaned, tmp_path).samples == len(frames) * 576
    assert Joiner("mp3", 1).cleaner(0).feed(data) == data  # without drop_tags: the upstream's bytes


def test_a_segmenter_comes_back_to_a_checkpoint_or_keeps_only_listed_segments() -> None:
    """restore() forgets everything after a checkpoint; truncate(n) keeps n segments and continues after them:
    feeding the same frames again gives the same segments as one pass."""
    frames = mpeg.scan_all(b"".join(audio()[f"speech64_{i}"] for i in range(3)))[1]
    whole = hls.segment_all(frames, 2.0)
    segmenter = hls.Segmenter(2.0)
    segmenter.add(frames[:100])
    mark = segmenter.checkpoint()
    segmenter.add(frames[100:250])
    segmenter.restore(mark)
    assert segmenter.add(frames[100:]) + segmenter.finish() == whole[len(mark_segments(whole, mark)) :]
    again = hls.Segmenter(2.0)
    again.add(frames)
    again.truncate(2)
    rest = [f for f in frames if f.offset >= whole[1].end]
    assert again.add(rest) + again.finish() == whole[2:]


def mark_segments(segments: list[hls.Segment], mark: hls.Checkpoint) -> list[hls.Segment]:
    return segments[: mark.closed]
