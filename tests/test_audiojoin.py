"""Cleaning chunk audio for joining: the same output however the network splits the bytes."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.media.join import Joiner, JoinError, mp3_frame_length


def clean(joiner: Joiner, index: int, data: bytes, cuts: list[int]) -> bytes:
    """Feed `data` to a fresh cleaner in pieces cut at `cuts`, as the upstream's packets would arrive."""
    cleaner = joiner.cleaner(index)
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    out = b"".join(cleaner.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    return out + cleaner.finish()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=12), index=st.integers(0, 2))
@pytest.mark.parametrize("fmt", ["mp3", "aac", "wav", "pcm"])
def test_output_does_not_depend_on_packet_boundaries(
    clips: dict[str, list[bytes]], fmt: str, cuts: list[int], index: int
) -> None:
    """Any split of a chunk's bytes into packets gives the same cleaned audio as one whole packet."""
    data = clips[fmt][1]
    assert clean(Joiner(fmt, 3), index, data, cuts) == clean(Joiner(fmt, 3), index, data, [])


def test_mp3_parts_lose_their_tags_and_info_frame(clips: dict[str, list[bytes]]) -> None:
    """The first part keeps its ID3 tag, later parts start at an audio frame; no part keeps the Info frame."""
    data = clips["mp3"][0]
    assert data.startswith(b"ID3") and b"Info" in data[:200]
    first, later = clean(Joiner("mp3", 2), 0, data, []), clean(Joiner("mp3", 2), 1, data, [])
    assert first.startswith(b"ID3") and b"Info" not in first[:200]
    assert mp3_frame_length(later[:4]) is not None
    assert first.endswith(later)


def test_single_chunk_is_passed_through_unchanged(clips: dict[str, list[bytes]]) -> None:
    """With one chunk, every format's bytes are kept exactly, headers included."""
    for fmt, data in clips.items():
        assert clean(Joiner(fmt, 1), 0, data[0], [7, 100]) == data[0]


def wav(samples: bytes, *, data_size: int | None = None, extra: bytes = b"") -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, 24000, 48000, 2, 16)
    size = len(samples) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST\x04\x00\x00\x00INFO"
    body += b"data" + struct.pack("<I", size) + samples + extra
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_wav_parts_become_one_header_and_samples() -> None:
    """WAV parts keep only their samples (not LIST or trailing chunks); the header gets true sizes at the end."""
    joiner = Joiner("wav", 2)
    first = clean(joiner, 0, wav(b"\x01\x00" * 10, extra=b"LIST\x02\x00\x00\x00ab"), [3, 50])
    second = clean(joiner, 1, wav(b"\x02\x00" * 5, data_size=0xFFFFFFFF), [])
    joined = bytearray(first + second)
    assert joined.count(b"RIFF") == 1 and b"LIST" not in joined
    for offset, data in joiner.patches(len(joined)):
        joined[offset : offset + len(data)] = data
    header = joiner.wav_header_size
    assert header == 44
    assert struct.unpack("<I", joined[4:8])[0] == len(joined) - 8
    assert struct.unpack("<I", joined[40:44])[0] == 30 == len(joined) - header
    assert joined[header:] == b"\x01\x00" * 10 + b"\x02\x00" * 5


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"NOTAWAVEFILE" * 3, "RIFF"), (wav(b"")[:36], "data chunk"), (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", "fmt")],
)
def test_wav_that_cannot_be_joined_is_an_error(data: bytes, message: str) -> None:
    """Bytes that are not a usable WAV stream raise JoinError instead of producing a broken file."""
    cleaner = Joiner("wav", 2).cleaner(1)
    with pytest.raises(JoinError, match=message):
        cleaner.feed(data)
        cleaner.finish()


@pytest.mark.parametrize("fmt", ["opus", "flac"])
def test_opus_and_flac_cannot_be_joined(fmt: str) -> None:
    """More than one chunk of opus or flac is refused up front, naming the formats that work."""
    with pytest.raises(JoinError, match="mp3, aac, wav, pcm"):
        Joiner(fmt, 2)
    Joiner(fmt, 1)
