"""speccyd.media.validate on real audio made by ffmpeg: every format passes whole and in any pieces; garbage,
another format, truncation, corruption and trailing junk are refused, each with a reason a person can act on."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from speccyd.media.validate import AudioError, validate, validate_file, validator
from tests.conftest import decode
from tests.fake_upstream import CLIP_DURATIONS
from tests.media_audio import audio, need_ffmpeg

FORMATS = ("mp3", "aac", "wav", "pcm", "flac", "opus")
# Formats whose every byte sequence is checked by a CRC or a count in a header: any cut is noticed.
CUT_ANYWHERE = ("flac", "opus")


def ffmpeg(source: str, *output: str, rate: int = 24000, channels: int = 1) -> bytes:
    """Encode a lavfi source with ffmpeg, written to a pipe (as a stream: no seeking back to fix headers)."""
    need_ffmpeg()
    command = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{source}:sample_rate={rate}", "-ac", str(channels)]
    return subprocess.run([*command, *output, "-"], capture_output=True, check=True, timeout=60).stdout


@functools.cache
def extra_files() -> dict[str, tuple[str, bytes]]:
    """Variants OpenAI and other writers produce: streamed headers, other sample formats, another container."""
    sine = "sine=frequency=500:duration=1.5"
    with tempfile.TemporaryDirectory() as directory:
        m4a = Path(directory) / "clip.m4a"
        need_ffmpeg()
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{sine}:sample_rate=24000", "-c:a", "aac", str(m4a)],
            check=True, timeout=60,
        )  # fmt: skip
        m4a_bytes = m4a.read_bytes()
    return {
        "streamed wav (sizes 0xFFFFFFFF)": ("wav", ffmpeg(sine, "-c:a", "pcm_s16le", "-f", "wav")),
        "24-bit stereo wav (extensible)": ("wav", ffmpeg(sine, "-c:a", "pcm_s24le", "-f", "wav", channels=2)),
        "float wav": ("wav", ffmpeg(sine, "-c:a", "pcm_f32le", "-f", "wav", rate=48000)),
        "streamed flac (STREAMINFO unknowns)": ("flac", ffmpeg(sine, "-c:a", "flac", "-f", "flac")),
        "stereo 48 kHz flac": ("flac", ffmpeg(sine, "-c:a", "flac", "-f", "flac", rate=48000, channels=2)),
        "stereo opus": ("opus", ffmpeg(sine, "-c:a", "libopus", "-f", "ogg", rate=48000, channels=2)),
        "m4a": ("m4a", m4a_bytes),
    }


def all_real(clips: dict[str, list[bytes]]) -> list[tuple[str, str, bytes]]:
    """(name, format, bytes) of every real file: the fake upstream's clips, the media clips, the variants."""
    found = [(f"{fmt} clip {i}", fmt, data) for fmt, datas in clips.items() for i, data in enumerate(datas)]
    found += [(name, "aac" if name.startswith("aac") else "mp3", data) for name, data in audio().items()]
    found += [(name, fmt, data) for name, (fmt, data) in extra_files().items() if fmt != "m4a"]
    return found


def test_every_real_file_validates_with_its_duration(clips: dict[str, list[bytes]], tmp_path: Path) -> None:
    """Every clip ffmpeg made, of every format and variant, passes; its duration is what ffmpeg decodes."""
    for name, fmt, data in all_real(clips):
        info = validate(fmt, data)
        assert (info.format, info.size) == (fmt, len(data)), name
        decoded = decode(data, fmt, tmp_path)
        assert decoded.errors == "", name
        assert info.seconds == pytest.approx(decoded.seconds, abs=0.01), name
    for fmt, datas in clips.items():
        for i, data in enumerate(datas):
            assert validate(fmt, data).seconds == pytest.approx(CLIP_DURATIONS[i], abs=0.1), (fmt, i)


def test_bytes_fed_in_any_pieces_give_the_same_answer(clips: dict[str, list[bytes]]) -> None:
    """One byte at a time, odd-sized pieces, or all at once: the same result (uploads arrive in any pieces)."""
    for fmt in FORMATS:
        data = clips[fmt][0]
        whole = validate(fmt, data)
        for piece in (1, 7, 4093):
            check = validator(fmt)
            for at in range(0, len(data), piece):
                check.feed(data[at : at + piece])
            assert check.finish() == whole, (fmt, piece)


def test_files_on_disk_are_read_a_block_at_a_time(clips: dict[str, list[bytes]], tmp_path: Path) -> None:
    """validate_file gives the same answer as validate, for a file larger than its read block."""
    data = clips["pcm"][2] * 40  # 2.5 MB
    path = tmp_path / "long.pcm"
    path.write_bytes(data)
    assert validate_file("pcm", path) == validate("pcm", data)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "pcm"])
def test_garbage_with_the_right_extension_is_refused(fmt: str) -> None:
    """Random bytes, text, zeros or an HTML error page named .mp3 (etc.) are not audio."""
    for junk in (os.urandom(50_000), b"hello world\n" * 1000, bytes(20_000), b"<html><body>502</body></html>"):
        with pytest.raises(AudioError):
            validate(fmt, junk)


def test_pcm_is_any_even_number_of_bytes_but_not_a_container() -> None:
    """Raw pcm: any even, non-empty length; odd, empty, or a wav/ogg/flac file claimed as pcm is refused."""
    assert validate("pcm", os.urandom(48_000)).seconds == 1.0
    with pytest.raises(AudioError, match="even number of bytes; this has 48001"):
        validate("pcm", os.urandom(48_001))
    with pytest.raises(AudioError, match="the file is empty"):
        validate("pcm", b"")
    with pytest.raises(AudioError, match="not raw pcm audio: this is wav"):
        validate("pcm", extra_files()["streamed wav (sizes 0xFFFFFFFF)"][1])


def test_every_format_claimed_as_another_is_refused(clips: dict[str, list[bytes]]) -> None:
    """A real file of one format uploaded as any other (pcm aside, which any bytes can be) is refused."""
    for real in FORMATS:
        for claimed in FORMATS:
            if claimed in (real, "pcm") or real == "pcm":
                continue
            with pytest.raises(AudioError):
                validate(claimed, clips[real][1])


def test_refusals_name_what_the_file_is() -> None:
    """An m4a uploaded as aac, or a wav uploaded as mp3, is refused by what it really is."""
    with pytest.raises(AudioError, match="not aac audio: this is mp4/m4a"):
        validate("aac", extra_files()["m4a"][1])
    with pytest.raises(AudioError, match="not mp3 audio: this is wav"):
        validate("mp3", extra_files()["float wav"][1])
    with pytest.raises(AudioError, match="not flac audio: this is ogg"):
        validate("flac", extra_files()["stereo opus"][1])


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "pcm"])
def test_truncated_files_are_refused(clips: dict[str, list[bytes]], fmt: str) -> None:
    """A download cut short is refused: at half, a few bytes short, or inside the header."""
    data = clips[fmt][2]
    for keep in (len(data) // 2 + 1, len(data) - 3, 20):
        with pytest.raises(AudioError):
            validate(fmt, data[:keep])


def test_truncation_at_a_frame_boundary_is_caught_by_the_headers(clips: dict[str, list[bytes]]) -> None:
    """mp3 cut after a whole frame: its Info header's frame count tells; flac: STREAMINFO's sample count."""
    from speccyd.media import mpeg

    data = clips["mp3"][2]
    _, frames = mpeg.scan_all(data)
    with pytest.raises(AudioError, match=rf"Info header says {len(frames)} frames, it has {len(frames) - 1}"):
        validate("mp3", data[: frames[-1].offset])
    flac = clips["flac"][2]
    with pytest.raises(AudioError, match="STREAMINFO says 31200 samples"):
        # Cut right before the last frame header (the last 0xFFF8 sync whose CRC-8 holds).
        validate("flac", flac[: _last_flac_frame(flac)])


def _last_flac_frame(data: bytes) -> int:
    from speccyd.media.flac import FlacValidator, parse_header

    check = FlacValidator()
    check.feed(data[:4096])  # reads STREAMINFO
    assert check._info is not None
    at = len(data)
    while True:
        at = data.rfind(b"\xff\xf8", 0, at)
        if parse_header(data, at, check._info, False) is not None:
            return at


@pytest.mark.parametrize("fmt", CUT_ANYWHERE)
def test_a_damaged_byte_is_caught_by_the_crc(clips: dict[str, list[bytes]], fmt: str) -> None:
    """One byte changed in the middle of a flac frame or an ogg page fails its CRC."""
    data = bytearray(clips[fmt][2])
    data[len(data) * 2 // 3] ^= 0x5A
    with pytest.raises(AudioError, match="CRC"):
        validate(fmt, bytes(data))


@pytest.mark.parametrize("fmt", ["mp3", "aac", "flac", "opus", "wav"])
def test_junk_after_the_audio_is_refused(clips: dict[str, list[bytes]], fmt: str) -> None:
    """Bytes after the last frame, page or chunk (a file glued to an error message) are refused."""
    with pytest.raises(AudioError):
        validate(fmt, clips[fmt][0] + b"\n<html>Internal Server Error</html>\n")


def test_wav_sizes_must_agree(clips: dict[str, list[bytes]]) -> None:
    """A RIFF size or data size that is neither exact nor 0xFFFFFFFF, or a data chunk of part samples, is refused."""
    data = bytearray(clips["wav"][0])
    data[4:8] = (len(data) + 100).to_bytes(4, "little")
    with pytest.raises(AudioError, match="the RIFF header says"):
        validate("wav", bytes(data))
    streamed = extra_files()["streamed wav (sizes 0xFFFFFFFF)"][1]
    with pytest.raises(AudioError, match="not whole 2-byte sample frames"):
        validate("wav", streamed[:-1])
    assert validate("wav", streamed[:-2]).size == len(streamed) - 2  # a stream cut at a sample: still valid


def test_opus_stream_rules(clips: dict[str, list[bytes]]) -> None:
    """Two Opus files glued together, or a missing page, break the single-stream page sequence."""
    opus = clips["opus"][2]
    with pytest.raises(AudioError):
        validate("opus", opus + opus)
    pages = []
    at = 0
    while at < len(opus):
        segments = opus[at + 26]
        length = 27 + segments + sum(opus[at + 27 : at + 27 + segments])
        pages.append(opus[at : at + length])
        at += length
    assert len(pages) >= 4  # OpusHead, OpusTags, then a page per second of audio
    with pytest.raises(AudioError, match="pages are missing"):
        validate("opus", b"".join(pages[:2] + pages[3:]))
