"""Joining the audio of a long text's chunks into one file that players treat as one track.

Each chunk's audio goes through a streaming `Cleaner` as it arrives, so the joined file can be written and
streamed live: MP3 loses its per-chunk ID3 tags and Xing/Info/VBRI header frame (which would tell a player
the whole track is one chunk long), and with it the encoder delay and padding that frame told decoders to
trim, so each part also drops the whole frames nearest to that delay and padding, repacking the first kept
frames' bit reservoir (speccyd.media.mp3join): the joined file decodes as long as its parts decoded alone,
within half a frame per part. ADTS AAC (which cannot signal priming, so decodes the same joined or alone)
and raw PCM concatenate as they are, and WAV keeps one RIFF header whose sizes are written once the total
is known. Ogg Opus and FLAC carry stream-wide headers,
granule positions and checksums that plain concatenation breaks, so long text in those formats is refused.
"""

from __future__ import annotations

import struct

from speccyd.media import mp3join, mpeg

JOINABLE = ("mp3", "aac", "wav", "pcm")

# A streamed WAV header's sizes before the total is known: "until the end of the stream", as encoders write it.
UNKNOWN_SIZE = 0xFFFFFFFF
_ID3V1_SIZE = 128


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

    def __init__(self, fmt: str, total: int, *, drop_tags: bool = False) -> None:
        """drop_tags: the file is only audio frames (after a tag of speccyd's own, if any): no part keeps its
        ID3 tags, not even the first, and a single mp3 part also loses its Xing/Info frame."""
        if total > 1 and fmt not in JOINABLE:
            raise JoinError(f"{fmt} audio cannot be joined; long text needs one of: {', '.join(JOINABLE)}")
        self.fmt = fmt
        self.total = total
        self.drop_tags = drop_tags
        self.wav_header_size: int | None = None

    def cleaner(self, index: int) -> Cleaner:
        """A fresh cleaner for one attempt at chunk `index` (0-based)."""
        keep_id3 = index == 0 and not self.drop_tags
        if self.total == 1:
            if self.drop_tags and self.fmt == "mp3":
                return Mp3HeadCleaner()
            if self.drop_tags and self.fmt == "aac":
                return TagCleaner(keep_id3=False)
            return Cleaner()  # a single chunk is the upstream's file, byte for byte
        if self.fmt == "mp3":
            return Mp3Cleaner(keep_id3=keep_id3)
        if self.fmt == "aac":
            return TagCleaner(keep_id3=keep_id3)  # ADTS: frames are self-contained, only tags go
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
    parsed = mpeg.parse_header(header)
    return parsed.length if parsed is not None else None


class Mp3Cleaner(Cleaner):
    """One mp3 part of a join: whole frames only, no tags but the first part's ID3v2, no Info frame, and
    the whole frames of encoder delay and padding dropped (speccyd.media.mp3join.PartTrimmer)."""

    def __init__(self, *, keep_id3: bool) -> None:
        self._trimmer = mp3join.PartTrimmer(keep_id3=keep_id3)

    @property
    def samples(self) -> int:
        """Samples of this part in the joined file, so far (all of them once finished)."""
        return self._trimmer.samples

    def feed(self, data: bytes) -> bytes:
        return self._trimmer.feed(data)

    def finish(self) -> bytes:
        return self._trimmer.finish()


class TagCleaner(Cleaner):
    """Drops a leading ID3v2 tag (unless kept) and a trailing ID3v1 tag; what is between passes unchanged."""

    def __init__(self, *, keep_id3: bool) -> None:
        self._keep_id3 = keep_id3
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
                self._stage = "stream"
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


class Mp3HeadCleaner(TagCleaner):
    """A whole upstream mp3 kept as it is but for its ID3 tags and its Xing/Info/VBRI header frame.

    The header frame's frame count and gapless trimming describe one upstream file; in a file that a retry
    may have continued (see generation/assembly.py) they would be wrong, and they make a decoder's length
    differ from what the frames (and so the HLS segments) hold. Bytes that are not mp3 pass unchanged.
    """

    def __init__(self) -> None:
        super().__init__(keep_id3=False)
        self._info_checked = False
        self._pending = b""  # the start of the audio, until it is known whether it is a header frame

    def feed(self, data: bytes) -> bytes:
        out = super().feed(data)  # without the tag: what comes out starts with the first frame
        if self._info_checked:
            return out
        self._pending += out
        return self._check_info(final=False)

    def finish(self) -> bytes:
        out = super().finish()
        if self._info_checked:
            return out
        self._pending += out
        return self._check_info(final=True)

    def _check_info(self, *, final: bool) -> bytes:
        pending = self._pending
        header = mpeg.parse_header(pending)
        if header is None and len(pending) < mpeg.HEADER_SIZE and not final:
            return b""
        if header is not None and len(pending) < header.length and not final:
            return b""
        self._info_checked = True
        self._pending = b""
        if header is not None and len(pending) >= header.length and mpeg.parse_info_frame(pending, header):
            return pending[header.length :]
        return pending


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
