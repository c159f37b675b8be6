"""Joining the audio of a long text's chunks into one file that players treat as one track.

Each chunk's audio goes through a streaming `Cleaner` as it arrives, so the joined file can be written and
streamed live: MP3 loses its per-chunk ID3 tags and Xing/Info/VBRI header frame (which would tell a player
the whole track is one chunk long), ADTS AAC and raw PCM concatenate as they are, and WAV keeps one RIFF
header whose sizes are written once the total is known. Ogg Opus and FLAC carry stream-wide headers,
granule positions and checksums that plain concatenation breaks, so long text in those formats is refused.
"""

from __future__ import annotations

import struct

JOINABLE = ("mp3", "aac", "wav", "pcm")

# A streamed WAV header's sizes before the total is known: "until the end of the stream", as encoders write it.
UNKNOWN_SIZE = 0xFFFFFFFF
_ID3V1_SIZE = 128

# MPEG audio Layer III bitrates (kbit/s) by bitrate index, and sample rates by version.
_BITRATES_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_BITRATES_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


class JoinError(Exception):
    """A chunk's audio is not in a shape this module can join."""


class Cleaner:
    """Passes audio through unchanged; subclasses drop what must not repeat inside a joined file."""

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class Joiner:
    """The cleaners for one job's chunks, and the header fix-ups once the joined size is known."""

    def __init__(self, fmt: str, total: int) -> None:
        if total > 1 and fmt not in JOINABLE:
            raise JoinError(f"{fmt} audio cannot be joined; long text needs one of: {', '.join(JOINABLE)}")
        self.fmt = fmt
        self.total = total
        self.wav_header_size: int | None = None

    def cleaner(self, index: int) -> Cleaner:
        """A fresh cleaner for one attempt at chunk `index` (0-based)."""
        if self.total == 1:
            return Cleaner()  # a single chunk is the upstream's file, byte for byte
        if self.fmt == "mp3":
            return Mp3Cleaner(keep_id3=index == 0)
        if self.fmt == "aac":
            return Mp3Cleaner(keep_id3=index == 0, drop_info_frame=False)  # ADTS: only a leading ID3 tag
        if self.fmt == "wav":
            return WavCleaner(self, first=index == 0)
        return Cleaner()

    def patches(self, size: int) -> list[tuple[int, bytes]]:
        """(offset, bytes) to write over the joined file of `size` bytes before it is final."""
        if self.wav_header_size is None:
            return []
        riff = min(size - 8, UNKNOWN_SIZE)
        data = min(size - self.wav_header_size, UNKNOWN_SIZE)
        return [(4, struct.pack("<I", riff)), (self.wav_header_size - 4, struct.pack("<I", data))]


def _id3v2_size(head: bytes) -> int:
    """Length of the ID3v2 tag that `head` (at least 10 bytes) starts with, or 0."""
    if not head.startswith(b"ID3"):
        return 0
    size = 0
    for byte in head[6:10]:  # "syncsafe": 7 bits per byte
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def mp3_frame_length(header: bytes) -> int | None:
    """Bytes in the MPEG Layer III frame that starts with this 4-byte header; None if it is not one."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 3
    layer = (header[1] >> 1) & 3
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    padding = (header[2] >> 1) & 1
    if version == 3:
        return 144_000 * _BITRATES_V1[bitrate_index] // _SAMPLE_RATES[3][rate_index] + padding
    return 72_000 * _BITRATES_V2[bitrate_index] // _SAMPLE_RATES[version][rate_index] + padding


def _info_tag_offset(header: bytes) -> int:
    """Where a Xing/Info tag sits in a Layer III frame: after the header and the side information."""
    mpeg1 = (header[1] >> 3) & 3 == 3
    mono = header[3] >> 6 == 3
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return 4 + side_info


class Mp3Cleaner(Cleaner):
    """Drops a leading ID3v2 tag (unless kept), a leading Xing/Info/VBRI frame, and a trailing ID3v1 tag."""

    _PREFIX = 64  # enough of the first frame to find a Xing tag (offset <= 36) or VBRI (offset 36)

    def __init__(self, *, keep_id3: bool, drop_info_frame: bool = True) -> None:
        self._keep_id3 = keep_id3
        self._drop_info = drop_info_frame
        self._stage = "id3"
        self._buffer = b""
        self._skip = 0  # bytes still to drop
        self._pass = 0  # bytes still to emit before the next decision

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                self._buffer = self._buffer[dropped:]
                self._skip -= dropped
                if self._skip:
                    break
            if self._pass:
                taken = self._buffer[: self._pass]
                out += taken
                self._buffer = self._buffer[len(taken) :]
                self._pass -= len(taken)
                if self._pass:
                    break
            if self._stage == "id3":
                if len(self._buffer) < 10:
                    break
                tag = _id3v2_size(self._buffer[:10])
                if self._keep_id3:
                    self._pass = tag
                else:
                    self._skip = tag
                self._stage = "frame" if self._drop_info else "stream"
            elif self._stage == "frame":
                if len(self._buffer) < self._PREFIX:
                    break
                self._stage = "stream"
                length = mp3_frame_length(self._buffer[:4])
                if length is not None:
                    at = _info_tag_offset(self._buffer)
                    if self._buffer[at : at + 4] in (b"Xing", b"Info") or self._buffer[36:40] == b"VBRI":
                        self._skip = length
            else:
                # Hold back what could be a trailing ID3v1 tag until the end is known.
                keep = max(0, len(self._buffer) - _ID3V1_SIZE)
                out += self._buffer[:keep]
                self._buffer = self._buffer[keep:]
                break
        return bytes(out)

    def finish(self) -> bytes:
        if self._stage != "stream":  # shorter than a tag check: feed the remainder through as stream
            self._stage, self._skip, self._pass = "stream", 0, 0
        tail = self._buffer
        self._buffer = b""
        if len(tail) == _ID3V1_SIZE and tail.startswith(b"TAG"):
            return b""
        return tail


class WavCleaner(Cleaner):
    """Keeps only the samples of each chunk; the first chunk's output starts with one joined header."""

    def __init__(self, joiner: Joiner, *, first: bool) -> None:
        self._joiner = joiner
        self._first = first
        self._buffer = b""
        self._fmt: bytes | None = None
        self._remaining: int | None = None  # data bytes still expected; None until the data chunk starts
        self._bounded = False

    def feed(self, data: bytes) -> bytes:
        if self._remaining is not None:
            return self._samples(data)
        self._buffer += data
        out = b""
        position = 12
        if len(self._buffer) < 12:
            return b""
        if self._buffer[:4] != b"RIFF" or self._buffer[8:12] != b"WAVE":
            raise JoinError("upstream sent WAV audio without a RIFF/WAVE header")
        while len(self._buffer) >= position + 8:
            chunk_id = self._buffer[position : position + 4]
            (size,) = struct.unpack("<I", self._buffer[position + 4 : position + 8])
            body = position + 8
            if chunk_id == b"data":
                if self._fmt is None:
                    raise JoinError("upstream sent WAV audio with no fmt chunk before its data")
                if self._first:
                    out = self._header(self._fmt)
                self._bounded = size not in (0, UNKNOWN_SIZE)
                self._remaining = size if self._bounded else -1
                rest = self._buffer[body:]
                self._buffer = b""
                return out + self._samples(rest)
            padded = size + (size & 1)
            if len(self._buffer) < body + padded:
                break
            if chunk_id == b"fmt ":
                self._fmt = self._buffer[body : body + size]
            position = body + padded
        return b""

    def _samples(self, data: bytes) -> bytes:
        if not self._bounded:
            return data
        assert self._remaining is not None
        taken = data[: self._remaining]  # anything after the data chunk (LIST, ...) is not sound
        self._remaining -= len(taken)
        return taken

    def _header(self, fmt: bytes) -> bytes:
        header = b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
        header += b"fmt " + struct.pack("<I", len(fmt)) + fmt + (b"\0" if len(fmt) & 1 else b"")
        header += b"data" + struct.pack("<I", UNKNOWN_SIZE)
        self._joiner.wav_header_size = len(header)
        return header

    def finish(self) -> bytes:
        if self._remaining is None:
            raise JoinError("upstream sent WAV audio without a data chunk")
        return b""
