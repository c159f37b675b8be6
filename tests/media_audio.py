"""Real encoded audio for the speccyd.media tests, made once per test process by ffmpeg, and a decoder."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_upstream import ffmpeg_available

SPEECH = "Part {i} of the specification says that the server answers at once, and every device shares it."
# name -> (lavfi source, channels, sample rate, encoder arguments). 24 kHz mono is what OpenAI sends; the
# others cover MPEG-1 (1152 samples per frame, stereo), MPEG-2.5 and the 160 kbit/s ceiling of MPEG-2.
_LAME = ["-c:a", "libmp3lame", "-f", "mp3"]
SOURCES: dict[str, tuple[str, int, int, list[str]]] = {
    **{
        f"sine64_{i}": (f"sine=frequency={300 + 150 * i}:duration={d}", 1, 24000, [*_LAME, "-b:a", "64k"])
        for i, d in enumerate((0.6, 0.9, 1.3))
    },
    **{
        f"speech160_{i}": (f"flite=text='{SPEECH.format(i=i)}':voice=slt", 1, 24000, [*_LAME, "-b:a", "160k"])
        for i in range(3)
    },
    **{
        f"speech64_{i}": (f"flite=text='{SPEECH.format(i=i)}':voice=kal", 1, 24000, [*_LAME, "-b:a", "64k"])
        for i in range(3)
    },
    **{
        f"stereo128_{i}": (f"anoisesrc=color=pink:duration={d}:seed={i}", 2, 44100, [*_LAME, "-b:a", "128k"])
        for i, d in enumerate((0.5, 0.8))
    },
    "mono12": ("anoisesrc=color=brown:duration=0.7:seed=5", 1, 12000, [*_LAME, "-b:a", "24k"]),
    **{
        f"aac_{i}": (
            f"sine=frequency={300 + 150 * i}:duration={d}",
            1,
            24000,
            ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
        )
        for i, d in enumerate((0.6, 0.9, 1.3))
    },
}


def need_ffmpeg() -> None:
    if not ffmpeg_available():
        pytest.skip("ffmpeg/ffprobe not installed (Debian: apt-get install -y ffmpeg); these tests decode real audio")


@functools.cache
def _encoded() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as directory:

        def encode(name: str) -> bytes:
            source, channels, rate, output = SOURCES[name]
            path = Path(directory) / name
            # flite speaks at its voice's own rate and takes no sample_rate option; -ar resamples it.
            lavfi = source if source.startswith("flite") else f"{source}:sample_rate={rate}"
            command = [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                lavfi,
                "-ac",
                str(channels),
                "-ar",
                str(rate),
            ]
            subprocess.run([*command, *output, str(path)], check=True, timeout=60)
            return path.read_bytes()

        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(SOURCES, pool.map(encode, SOURCES), strict=True))


def audio() -> dict[str, bytes]:
    """Every clip in SOURCES by name; skips the test where ffmpeg is missing."""
    need_ffmpeg()
    return _encoded()


@dataclass
class Decoded:
    samples: int  # per channel
    errors: str  # what ffmpeg printed at -v error, and its exit status if it failed
    pcm: bytes


def decode(data: bytes, directory: Path, suffix: str = ".mp3", *, extra: tuple[str, ...] = ()) -> Decoded:
    """Decode with ffmpeg at the file's own rate and channels."""
    source = directory / f"decode{suffix}"
    source.write_bytes(data)
    return decode_path(source, extra=extra)


def decode_path(source: Path | str, *, extra: tuple[str, ...] = ()) -> Decoded:
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a",
            "-show_entries",
            "stream=channels",
            "-of",
            "csv=p=0",
            str(source),
        ],
        capture_output=True,
        check=False,
        timeout=60,
        text=True,
    )
    channels = int(probe.stdout.split()[0]) if probe.stdout.split() else 1
    result = subprocess.run(
        ["ffmpeg", "-v", "error", *extra, "-i", str(source), "-f", "s16le", "-"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    errors = result.stderr.decode(errors="replace") + ("" if result.returncode == 0 else f"exit {result.returncode}")
    return Decoded(len(result.stdout) // 2 // channels, errors, result.stdout)


def ffprobe_packets(data: bytes, directory: Path, suffix: str) -> int:
    source = directory / f"probe{suffix}"
    source.write_bytes(data)
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "packet=pts", "-of", "csv", str(source)],
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    )
    return sum(1 for line in result.stdout.splitlines() if line.startswith("packet"))
