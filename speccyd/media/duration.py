"""Sample counts of the formats that are not made of mp3/ADTS frames: WAV, raw PCM, Ogg Opus and FLAC.

What the read-along timeline needs is the exact number of samples the audio decodes to. WAV and PCM have
fixed-size samples, so bytes tell. Ogg Opus and FLAC are never joined (one upstream call per file), so their
length is read once the file is complete, from its first and last few kilobytes: the Opus pre-skip and the
last page's granule position (RFC 7845 §4), and FLAC's STREAMINFO total or, when a streaming encoder left it
0, the number of its last frame (the FLAC format, "FRAME_HEADER").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# What OpenAI sends as `pcm`: raw 24 kHz, 16-bit signed little-endian, mono.
PCM_RATE = 24_000
PCM_BLOCK = 2
OPUS_RATE = 48_000  # RFC 7845 §4: granule positions count 48 kHz samples whatever the input rate
TAIL_BYTES = 64 * 1024  # more than an Ogg page (at most 65,307 bytes) or a FLAC frame header and its search


@dataclass(frozen=True, slots=True)
class WavLayout:
    data_offset: int  # where the samples begin
    block_align: int  # bytes per sample frame (all channels)
    sample_rate: int
    channels: int


def wav_layout(head: bytes) -> WavLayout | None:
    """The layout of a RIFF/WAVE stream from its first bytes; None until the data chunk's header is in `head`."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position = 12
    fmt: bytes | None = None
    while len(head) >= position + 8:
        chunk_id = head[position : position + 4]
        (size,) = struct.unpack("<I", head[position + 4 : position + 8])
        body = position + 8
        if chunk_id == b"data":
            if fmt is None or len(fmt) < 16:
                return None
            channels, rate, _, block_align = struct.unpack("<HIIH", fmt[2:14])
            if not block_align or not rate:
                return None
            return WavLayout(body, block_align, rate, channels)
        padded = size + (size & 1)
        if chunk_id == b"fmt ":
            if len(head) < body + size:
                return None
            fmt = head[body : body + size]
        position = body + padded
    return None


def opus_samples(head: bytes, tail: bytes) -> int | None:
    """48 kHz samples an Ogg Opus file decodes to: its last granule position minus the pre-skip."""
    at = head.find(b"OpusHead")
    if at < 0 or len(head) < at + 12:
        return None
    (pre_skip,) = struct.unpack("<H", head[at + 10 : at + 12])
    granule = _last_granule(tail)
    return None if granule is None else max(0, granule - pre_skip)


def _last_granule(tail: bytes) -> int | None:
    """The granule position of the last complete Ogg page in `tail` (RFC 3533 §6: the page header)."""
    at = tail.rfind(b"OggS")
    while at >= 0:
        if len(tail) >= at + 27 and tail[at + 4] == 0:  # stream structure version 0
            segments = tail[at + 26]
            table = tail[at + 27 : at + 27 + segments]
            if len(table) == segments and len(tail) >= at + 27 + segments + sum(table):
                (granule,) = struct.unpack("<q", tail[at + 6 : at + 14])
                if granule >= 0:  # -1: no packet ends on this page
                    return int(granule)
        at = tail.rfind(b"OggS", 0, at)
    return None


def flac_samples(head: bytes, tail: bytes) -> tuple[int, int] | None:
    """(sample rate, samples) of a FLAC stream: STREAMINFO's total, or the last frame's position and size."""
    if not head.startswith(b"fLaC") or len(head) < 8 + 34 or head[4] & 0x7F != 0:
        return None  # STREAMINFO must be the first metadata block
    info = head[8 : 8 + 34]
    min_block, max_block = struct.unpack(">HH", info[:4])
    packed = int.from_bytes(info[10:18], "big")
    rate = packed >> 44
    total = packed & ((1 << 36) - 1)
    if total:
        return rate, total
    last = _last_frame(tail)
    if last is None:
        return None
    variable, number, block = last
    # Fixed block size: every frame but the last has max_block samples and frames are numbered.
    start = number if variable or min_block != max_block else number * max_block
    return rate, start + block


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _last_frame(tail: bytes) -> tuple[bool, int, int] | None:
    """(variable block size, frame or sample number, block size) of the last frame header in `tail`.

    A header is trusted only when its CRC-8 matches: a false sync in audio data passes that one time in 256
    at most, and a real header is found a frame later.
    """
    at = len(tail) - 2
    while at >= 0:
        at = max(tail.rfind(b"\xff\xf8", 0, at + 2), tail.rfind(b"\xff\xf9", 0, at + 2))
        if at < 0:
            return None
        parsed = _frame_header(tail, at)
        if parsed is not None:
            return parsed
        at -= 1
    return None


def _frame_header(data: bytes, at: int) -> tuple[bool, int, int] | None:
    if len(data) < at + 6:
        return None
    variable = bool(data[at + 1] & 1)
    block_code, rate_code = data[at + 2] >> 4, data[at + 2] & 0xF
    if block_code == 0 or rate_code == 0xF or data[at + 3] & 1:
        return None
    position = at + 4
    first = data[position]
    extra = next((n for n in range(7) if not first & (0x80 >> n)), 7)  # UTF-8-style: leading 1 bits
    if extra == 1 or extra == 7:
        return None
    length = 1 if extra == 0 else extra
    number = first & (0x7F >> extra) if extra else first
    for byte in data[position + 1 : position + length]:
        if byte & 0xC0 != 0x80:
            return None
        number = (number << 6) | (byte & 0x3F)
    position += length
    if block_code == 1:
        block = 192
    elif block_code <= 5:
        block = 576 << (block_code - 2)
    elif block_code == 6:
        block, position = data[position] + 1 if position < len(data) else 0, position + 1
    elif block_code == 7:
        block, position = int.from_bytes(data[position : position + 2], "big") + 1, position + 2
    else:
        block = 256 << (block_code - 8)
    position += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if position >= len(data) or _crc8(data[at:position]) != data[position]:
        return None
    return variable, number, block
