"""Audio and players for the playback tests: clips long enough for 6-second HLS segments, ffmpeg as a client."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_upstream import CLIP_RATE, ffmpeg_available

# Three clips per format, picked by the fake upstream from the input's length; a paragraph of text becomes
# 2-3 s of audio, so a dozen paragraphs make several 6 s segments.
DURATIONS = (2.0, 2.5, 3.0)
LONG = 14.0  # one upstream call long enough for two segments: to see segments listed mid-call
_OUTPUT = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "pcm": ["-c:a", "pcm_s16le", "-f", "s16le"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "opus": ["-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-f", "ogg"],
}


def need_ffmpeg() -> None:
    if not ffmpeg_available():
        pytest.skip("ffmpeg/ffprobe not installed (Debian: apt-get install -y ffmpeg); these tests play real audio")


def _encode(fmt: str, seconds: float, frequency: int) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"clip.{fmt}"
        source = f"sine=frequency={frequency}:sample_rate={CLIP_RATE}:duration={seconds}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", *_OUTPUT[fmt], str(path)],
            check=True,
            timeout=60,
        )
        return path.read_bytes()


@functools.cache
def clips(seconds: tuple[float, ...] = DURATIONS) -> dict[str, list[bytes]]:
    """Clips of these lengths in every format, as the fake upstream serves them (`FakeUpstream.clips`)."""
    need_ffmpeg()
    return {fmt: [_encode(fmt, s, 300 + 100 * i) for i, s in enumerate(seconds)] for fmt in _OUTPUT}


@dataclass
class Played:
    samples: int
    errors: list[str]


async def ffmpeg_play(url: str, *extra: str, timeout: float = 60) -> Played:
    """What ffmpeg decodes from a URL (a playlist, or a file): mono samples at the source rate, and its
    complaints. Run as a subprocess, so the server under test keeps serving on this event loop."""
    process = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-v", "error", *extra, "-i", url, "-f", "s16le", "-ac", "1", "-",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    if process.returncode:
        lines.append(f"exit {process.returncode}")
    return Played(len(out) // 2, lines)


def without_dts_warnings(lines: list[str]) -> list[str]:
    """ffmpeg 5.1's HLS demuxer applies a new segment's PRIV time to mp3 packets it had already buffered, so
    its muxer warns of timestamps going back a frame at some boundaries; every sample is there, in order
    (tests/test_media_hls.py checks the PRIV values themselves)."""
    return [line for line in lines if "non monotonically increasing dts" not in line]
