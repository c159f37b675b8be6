"""MPEG audio Layer III (mp3): frame headers, the Xing/Info/VBRI header frame, and a streaming frame scanner.

References: ISO/IEC 11172-3 §2.4.1.3 (MPEG-1 header) and ISO/IEC 13818-3 §2.4.1.3 (MPEG-2 low sampling
frequencies); "MPEG 2.5" is Fraunhofer's extension to 8-12 kHz (version bits 00). The Info tag is LAME's
"Mp3 info tag rev 1" (Xing header + LAME extension), as written by LAME and by ffmpeg's mp3 muxer.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import Literal

from speccyd.media import scan

Version = Literal["1", "2", "2.5"]

HEADER_SIZE = 4
# ffmpeg's mp3 decoder (like LAME's own decoder, mpg123 and Apple's) outputs 528 + 1 samples of filterbank
# delay before the first encoded sample; libavformat/mp3dec.c skips `encoder delay + 528 + 1` samples.
DECODER_DELAY = 529

_VERSIONS: dict[int, Version] = {3: "1", 2: "2", 0: "2.5"}  # version bits 01 are reserved
_SAMPLE_RATES: dict[Version, tuple[int, int, int]] = {
    "1": (44100, 48000, 32000),
    "2": (22050, 24000, 16000),
    "2.5": (11025, 12000, 8000),
}
# Layer III bitrates in kbit/s by bitrate index 1..14 (0 is "free format", 15 is forbidden).
BITRATES: dict[Version, tuple[int, ...]] = {
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    "2.5": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


class ChannelMode(enum.IntEnum):
    STEREO = 0
    JOINT_STEREO = 1
    DUAL_CHANNEL = 2
    MONO = 3


@dataclass(frozen=True, slots=True)
class FrameHeader:
    version: Version
    bitrate_index: int
    bitrate: int  # kbit/s
    sample_rate: int
    padding: bool
    channel_mode: ChannelMode
    crc: bool  # a 16-bit CRC follows the header ("protection_bit" 0)

    @property
    def samples(self) -> int:
        # 11172-3: 1152 samples per frame; 13818-3 §2.4.2.1: Layer III at low rates has one granule, 576.
        return 1152 if self.version == "1" else 576

    @property
    def channels(self) -> int:
        return 1 if self.channel_mode == ChannelMode.MONO else 2

    @property
    def length(self) -> int:
        """Bytes in the frame, header included: 144 (MPEG-1) or 72 bytes per kbit/s per kHz, plus padding."""
        return frame_length(self.version, self.bitrate, self.sample_rate, self.padding)

    @property
    def side_info_size(self) -> int:
        # 11172-3 §2.4.1.7: 17 bytes mono, 32 otherwise; 13818-3 §2.4.1.7: 9 and 17 (one granule).
        if self.version == "1":
            return 17 if self.channel_mode == ChannelMode.MONO else 32
        return 9 if self.channel_mode == ChannelMode.MONO else 17

    @property
    def payload_offset(self) -> int:
        """Where main data may start: after the header, the CRC and the side information."""
        return HEADER_SIZE + (2 if self.crc else 0) + self.side_info_size

    def same_stream(self, other: FrameHeader) -> bool:
        """Whether `other` can be the next frame of the same stream (what a resyncing decoder checks)."""
        return (self.version, self.sample_rate, self.channels) == (other.version, other.sample_rate, other.channels)


def frame_length(version: Version, bitrate: int, sample_rate: int, padding: bool) -> int:
    slot_factor = 144_000 if version == "1" else 72_000  # bytes per frame = samples / 8 * bitrate / rate
    return slot_factor * bitrate // sample_rate + int(padding)


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader | None:
    """The Layer III frame header at `offset`, or None if those 4 bytes are not one this module accepts."""
    if len(data) < offset + HEADER_SIZE or data[offset] != 0xFF:
        return None
    # A stream repeats a handful of headers (padding on or off) hundreds of thousands of times: parsed once
    # each, a 100 MB file scans about three times as fast.
    return _parse_header(bytes(data[offset : offset + HEADER_SIZE]))


@functools.lru_cache(maxsize=4096)
def _parse_header(raw: bytes) -> FrameHeader | None:
    b0, b1, b2, b3 = raw
    if b0 != 0xFF or b1 & 0xE0 != 0xE0:  # 11 sync bits
        return None
    version = _VERSIONS.get((b1 >> 3) & 3)
    layer = (b1 >> 1) & 3
    bitrate_index = b2 >> 4
    rate_index = (b2 >> 2) & 3
    # Layer bits 01 are Layer III; free format (index 0) has no computable length, so it is not accepted.
    if version is None or layer != 1 or bitrate_index in (0, 15) or rate_index == 3 or b3 & 3 == 2:
        return None  # emphasis 10 is reserved
    return FrameHeader(
        version=version,
        bitrate_index=bitrate_index,
        bitrate=BITRATES[version][bitrate_index],
        sample_rate=_SAMPLE_RATES[version][rate_index],
        padding=bool((b2 >> 1) & 1),
        channel_mode=ChannelMode(b3 >> 6),
        crc=not b1 & 1,
    )


@dataclass(frozen=True, slots=True)
class InfoTag:
    """What a Xing/Info or VBRI header frame says about the stream after it."""

    kind: Literal["Xing", "Info", "VBRI"]
    frames: int | None  # audio frames after this one
    size: int | None  # bytes of audio, this frame included (Xing); VBRI counts the same
    encoder: str | None  # the LAME tag's 9-character encoder string, e.g. "LAME3.100" or "Lavc59.37"
    delay: int | None  # encoder delay in samples (LAME tag, 12 bits)
    padding: int | None  # samples of padding at the end (LAME tag, 12 bits)


# ffmpeg trusts the LAME tag's delay and padding only from these encoders (libavformat/mp3dec.c); others
# have been seen writing garbage there.
_TRUSTED_ENCODERS = (b"LAME", b"Lavf", b"Lavc")


def parse_info_frame(data: bytes | bytearray | memoryview, header: FrameHeader) -> InfoTag | None:
    """The Xing/Info/VBRI tag in the frame `data` (which starts with `header`), or None for an audio frame."""
    at = header.payload_offset  # the Xing tag takes the place of the main data
    raw = bytes(data[: header.length])
    if raw[at : at + 4] in (b"Xing", b"Info"):
        kind: Literal["Xing", "Info"] = "Xing" if raw[at : at + 4] == b"Xing" else "Info"
        (flags,) = struct.unpack(">I", raw[at + 4 : at + 8])
        position = at + 8
        frames = size = None
        if flags & 1:
            (frames,) = struct.unpack(">I", raw[position : position + 4])
            position += 4
        if flags & 2:
            (size,) = struct.unpack(">I", raw[position : position + 4])
            position += 4
        position += (100 if flags & 4 else 0) + (4 if flags & 8 else 0)  # TOC, quality indicator
        lame = raw[position : position + 24]
        if len(lame) < 24 or not lame.startswith(_TRUSTED_ENCODERS):
            return InfoTag(kind, frames, size, None, None, None)
        # LAME tag: encoder (9), revision/VBR method, lowpass, peak (4), two replay gains (2+2), flags,
        # ABR bitrate (1+1+4+2+2+1+1 = 12 bytes), then delay and padding as two 12-bit numbers.
        packed = int.from_bytes(lame[21:24], "big")
        return InfoTag(kind, frames, size, lame[:9].decode("latin-1"), packed >> 12, packed & 0xFFF)
    vbri = HEADER_SIZE + 32  # Fraunhofer's VBRI header sits 32 bytes after the header whatever the mode
    if raw[vbri : vbri + 4] == b"VBRI":
        size, frames = struct.unpack(">II", raw[vbri + 10 : vbri + 18])
        return InfoTag("VBRI", frames, size, None, None, None)
    return None


def decoded_samples(audio_frames: int, samples_per_frame: int, info: InfoTag | None) -> int:
    """How many samples ffmpeg decodes from `audio_frames` frames after an optional header frame `info`.

    Without a LAME tag every frame's samples come out. With one, libavformat/mp3dec.c skips
    `delay + 529` samples at the start and, when the frame count is known, ends at
    `frames * spf - padding + 529`: the encoder's own input length.
    """
    total = audio_frames * samples_per_frame
    if info is None or info.delay is None or info.padding is None:
        return total
    end = total
    if info.frames:
        end = min(total, info.frames * samples_per_frame - info.padding + DECODER_DELAY)
    return max(0, end - info.delay - DECODER_DELAY)


Frame = scan.Frame[FrameHeader]


class FrameScanner(scan.Scanner[FrameHeader]):
    """Layer III frames of a stream; a Xing/Info/VBRI frame at the start goes to `info` / `info_frame`."""

    def __init__(self, *, keep_tag: bool = False) -> None:
        super().__init__(keep_tag=keep_tag)
        self.info: InfoTag | None = None
        self.info_frame: Frame | None = None

    def _parse(self, data: bytes | bytearray, offset: int = 0) -> FrameHeader | None:
        return parse_header(data, offset)

    def _hold_first(self, frame: Frame) -> bool:
        self.info = parse_info_frame(frame.data, frame.header)
        if self.info is None:
            return False
        self.info_frame = frame
        return True


def scan_all(data: bytes) -> tuple[FrameScanner, list[Frame]]:
    """All the audio frames of a whole stream, and the scanner that found them (for its tags and counts)."""
    scanner = FrameScanner()
    return scanner, scanner.feed(data) + scanner.finish()
