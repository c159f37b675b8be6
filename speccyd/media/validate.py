"""Is this really audio of the claimed format? Parse every byte of it, as it arrives: for imported files.

Each format has a streaming validator: `feed` the bytes in any pieces, then `finish` returns what the audio
is (duration, rate, channels) or raises `AudioError` saying what is wrong, in words an owner can act on.
Nothing is kept but a frame or a header at a time, so a 100 MB file costs kilobytes of memory.

What "valid" means, per format (the formats OpenAI sends, which are what speccyd stores):

- mp3: MPEG audio frames from the first byte to the last (after an optional ID3v2 tag, before an optional
  ID3v1 tag), no byte between them, the last frame whole, and as many frames as a Xing/Info header says.
- aac: ADTS frames the same way (OpenAI's aac is ADTS; an MP4/M4A container is refused by name).
- wav: RIFF/WAVE with a PCM, float, A-law or mu-law fmt chunk whose sizes agree, and a data chunk of whole
  sample frames; the RIFF and data sizes are exact, or 0xFFFFFFFF ("until the end"), which is what OpenAI
  streams and what ffmpeg writes to a pipe.
- flac and opus: see speccyd.media.flac and speccyd.media.ogg.
- pcm: OpenAI's raw 24 kHz 16-bit mono little-endian: any even, non-zero number of bytes (that is not
  obviously a container file).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speccyd.media import adts, id3, mpeg

PCM_RATE = 24000  # OpenAI's pcm: 24 kHz, 16-bit, mono, little-endian
_HEAD = 16  # bytes kept from the start, to say what a refused file looks like instead
READ_BLOCK = 1024 * 1024


class AudioError(Exception):
    """The bytes are not valid audio of the claimed format; the message says what is wrong."""


@dataclass(frozen=True)
class AudioInfo:
    format: str
    size: int  # bytes
    seconds: float
    sample_rate: int
    channels: int


def looks_like(head: bytes) -> str | None:
    """What a file's first bytes say it is, when they say it unambiguously (container magic numbers)."""
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[4:8] == b"ftyp":
        return "mp4/m4a"
    if head.startswith(b"ID3"):
        return "a file with an ID3 tag (mp3 or aac)"
    return None


class Validator:
    """Counts and keeps the first bytes; subclasses parse (`_feed`, `_finish`)."""

    format = ""

    def __init__(self) -> None:
        self.size = 0
        self.head = b""

    def feed(self, data: bytes) -> None:
        if len(self.head) < _HEAD:
            self.head += data[: _HEAD - len(self.head)]
        self.size += len(data)
        self._feed(data)

    def finish(self) -> AudioInfo:
        if self.size == 0:
            raise AudioError("the file is empty")
        return self._finish()

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _finish(self) -> AudioInfo:
        raise NotImplementedError

    def refuse(self, problem: str) -> AudioError:
        """`problem`, or first what the file looks like when that is another format."""
        other = looks_like(self.head)
        if other is not None and other != self.format and not other.startswith("a file with an ID3"):
            return AudioError(f"not {self.format} audio: this is {other}")
        return AudioError(problem)


class _FrameStreamValidator(Validator):
    """mp3 and ADTS: the scanners of speccyd.media.scan, with every byte accounted for."""

    def __init__(self) -> None:
        super().__init__()
        self._scanner = self._make_scanner()
        self._rate = 0
        self._channels = 0

    def _make_scanner(self) -> mpeg.FrameScanner | adts.FrameScanner:
        raise NotImplementedError

    def _feed(self, data: bytes) -> None:
        self._take(self._scanner.feed(data))

    def _take(self, frames: list[mpeg.Frame] | list[adts.Frame]) -> None:
        if frames and not self._rate:
            self._rate = frames[0].sample_rate
            header = frames[0].header
            self._channels = header.channels if isinstance(header, mpeg.FrameHeader) else header.channel_configuration

    def _finish(self) -> AudioInfo:
        scanner = self._scanner
        self._take(scanner.finish())
        if not scanner.tag_done:
            raise AudioError(f"the ID3v2 tag at the start claims {scanner.id3v2_size} bytes; the file is shorter")
        if scanner.frames == 0:
            raise self.refuse(f"not {self.format} audio: no {self._frame_name} frame in {self.size} bytes")
        if scanner.truncated:
            raise AudioError(f"the file is truncated: its last frame is cut short ({scanner.truncated} bytes)")
        if scanner.skipped:
            raise self.refuse(f"{scanner.skipped} of its {self.size} bytes are not {self._frame_name} frames")
        self._check(scanner)
        return AudioInfo(self.format, self.size, self._samples(scanner) / self._rate, self._rate, self._channels)

    _frame_name = ""

    def _check(self, scanner: mpeg.FrameScanner | adts.FrameScanner) -> None:
        """Format-specific checks once every frame is known."""

    def _samples(self, scanner: mpeg.FrameScanner | adts.FrameScanner) -> int:
        return scanner.samples


class Mp3Validator(_FrameStreamValidator):
    format = "mp3"
    _frame_name = "MPEG audio"

    def _make_scanner(self) -> mpeg.FrameScanner:
        return mpeg.FrameScanner()

    def _check(self, scanner: mpeg.FrameScanner | adts.FrameScanner) -> None:
        info = scanner.info if isinstance(scanner, mpeg.FrameScanner) else None
        # A file cut at a frame boundary is still a valid stream; only the header knows it lost its end.
        if info is not None and info.frames and info.frames != scanner.frames:
            raise AudioError(
                f"the file is truncated: its {info.kind} header says {info.frames} frames, it has {scanner.frames}"
            )

    def _samples(self, scanner: mpeg.FrameScanner | adts.FrameScanner) -> int:
        # What a decoder plays: without the encoder delay and padding the Info header declares.
        info = scanner.info if isinstance(scanner, mpeg.FrameScanner) else None
        per_frame = scanner.samples // scanner.frames
        return mpeg.decoded_samples(scanner.frames, per_frame, info)


class AacValidator(_FrameStreamValidator):
    format = "aac"
    _frame_name = "ADTS"

    def _make_scanner(self) -> adts.FrameScanner:
        return adts.FrameScanner()


class PcmValidator(Validator):
    format = "pcm"

    def _feed(self, data: bytes) -> None:
        pass

    def _finish(self) -> AudioInfo:
        other = looks_like(self.head)
        if other is not None:
            raise AudioError(f"not raw pcm audio: this is {other}")
        if self.size % 2:
            raise AudioError(f"16-bit pcm has an even number of bytes; this has {self.size}")
        return AudioInfo(self.format, self.size, self.size / 2 / PCM_RATE, PCM_RATE, 1)


UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a WAV written as a stream: "until the end of the file"
_WAVE_FORMATS = {1: "PCM", 3: "IEEE float", 6: "A-law", 7: "mu-law"}
_EXTENSIBLE = 0xFFFE
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_*, after the tag
_MAX_FMT = 1024


class WavValidator(Validator):
    """RIFF/WAVE, chunk by chunk; the data chunk's bytes are counted, never kept."""

    format = "wav"

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._need = 12  # bytes to collect before the next parse step
        self._step: Callable[[bytes], None] = self._riff
        self._skip = 0  # bytes of the current chunk still to pass over
        self._in_data = False
        self._to_end = False  # the data chunk runs to the end of the file
        self._riff_size = 0
        self._fmt: tuple[int, int, int, int, int] | None = None  # tag, channels, rate, byte rate, block align
        self._data = 0
        self._seen_data = False

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        at = 0
        while at < len(view):
            if self._to_end:
                self._data += len(view) - at
                return
            if self._skip:
                taken = min(self._skip, len(view) - at)
                self._skip -= taken
                at += taken
                if self._in_data:
                    self._data += taken
                continue
            taken = min(self._need - len(self._buf), len(view) - at)
            self._buf += view[at : at + taken]
            at += taken
            if len(self._buf) == self._need:
                block, self._buf = bytes(self._buf), bytearray()
                self._step(block)

    def _riff(self, block: bytes) -> None:
        if block[:4] != b"RIFF":
            raise self.refuse("not wav audio: it does not start with RIFF")
        if block[8:12] != b"WAVE":
            raise AudioError(f"a RIFF file, but of type {block[8:12]!r}, not WAVE")
        (self._riff_size,) = struct.unpack("<I", block[4:8])
        self._expect_chunk()

    def _expect_chunk(self) -> None:
        self._in_data = False
        self._need, self._step = 8, self._chunk

    def _chunk(self, block: bytes) -> None:
        self._in_data = False
        name, (size,) = block[:4], struct.unpack("<I", block[4:8])
        padded = size + (size & 1)  # RIFF chunks are padded to an even length
        if name == b"fmt ":
            if not 16 <= size <= _MAX_FMT:
                raise AudioError(f"the fmt chunk has {size} bytes; a WAVE fmt chunk has 16 to 40")
            self._need, self._step = padded, lambda body: self._parse_fmt(body[:size])
        elif name == b"data":
            if self._fmt is None:
                raise AudioError("the data chunk comes before the fmt chunk")
            if self._seen_data:
                raise AudioError("the file has a second data chunk")
            self._seen_data = self._in_data = True
            if size == UNKNOWN_SIZE:
                self._to_end = True
            else:
                self._skip = size
                self._pad_after(size)
        else:
            if size == UNKNOWN_SIZE:
                raise AudioError(f"chunk {name!r} has no size")
            self._skip = padded
            self._need, self._step = 8, self._chunk

    def _pad_after(self, size: int) -> None:
        # The pad byte of an odd-sized data chunk is not audio: skip it once the data is counted.
        self._need, self._step = (1, lambda _: self._expect_chunk()) if size & 1 else (8, self._chunk)

    def _parse_fmt(self, body: bytes) -> None:
        tag, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", body[:16])
        if tag == _EXTENSIBLE:
            if len(body) < 40 or body[26:40] != _GUID_TAIL:
                raise AudioError("the fmt chunk is WAVE_FORMAT_EXTENSIBLE without a valid sub-format")
            (tag,) = struct.unpack("<H", body[24:26])
        if tag not in _WAVE_FORMATS:
            raise AudioError(f"the fmt chunk's format {tag:#x} is not one of {', '.join(_WAVE_FORMATS.values())}")
        if channels == 0 or rate == 0 or bits == 0:
            raise AudioError(f"the fmt chunk says {channels} channels at {rate} Hz, {bits} bits: not audio")
        if align != channels * ((bits + 7) // 8):
            raise AudioError(f"the fmt chunk's block align {align} is not {channels} channels x {bits} bits")
        if byte_rate != rate * align:
            raise AudioError(f"the fmt chunk's byte rate {byte_rate} is not {rate} Hz x {align} bytes")
        self._fmt = (tag, channels, rate, byte_rate, align)
        self._expect_chunk()

    def _finish(self) -> AudioInfo:
        if self._step == self._riff and not self._to_end:
            raise self.refuse(f"not wav audio: {self.size} bytes are too few for a RIFF header")
        if self._skip:
            what = "data" if self._in_data else "a"
            raise AudioError(f"the file is truncated: {what} chunk needs {self._skip} more bytes")
        if self._buf:
            raise AudioError(f"the file ends with {len(self._buf)} bytes that are not a whole chunk")
        if self._fmt is None:
            raise AudioError("the file has no fmt chunk")
        if not self._seen_data:
            raise AudioError("the file has no data chunk")
        _, channels, rate, byte_rate, align = self._fmt
        if self._data == 0:
            raise AudioError("the data chunk is empty: there is no audio")
        if self._data % align:
            raise AudioError(f"the data chunk's {self._data} bytes are not whole {align}-byte sample frames")
        if self._riff_size != UNKNOWN_SIZE and self._riff_size != self.size - 8:
            raise AudioError(f"the RIFF header says the file has {self._riff_size + 8} bytes; it has {self.size}")
        return AudioInfo(self.format, self.size, self._data / byte_rate, rate, channels)


def validator(fmt: str) -> Validator:
    """A fresh validator for one file of `fmt` (one of speccyd.media.formats.FORMATS)."""
    from speccyd.media.flac import FlacValidator
    from speccyd.media.ogg import OpusValidator

    kinds: dict[str, type[Validator]] = {
        "mp3": Mp3Validator,
        "aac": AacValidator,
        "wav": WavValidator,
        "pcm": PcmValidator,
        "flac": FlacValidator,
        "opus": OpusValidator,
    }
    return kinds[fmt]()


def validate(fmt: str, data: bytes) -> AudioInfo:
    """Validate a whole file held in memory (tests, small files)."""
    check = validator(fmt)
    check.feed(data)
    return check.finish()


def validate_file(fmt: str, path: Path) -> AudioInfo:
    """Validate a file on disk, reading it a block at a time (synchronous: run it off the event loop)."""
    check = validator(fmt)
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK):
            check.feed(block)
    return check.finish()


def id3_size(head: bytes) -> int:
    """Length of the ID3v2 tag that `head` (at least 10 bytes) begins with, or 0."""
    return id3.tag_size(head[: id3.HEADER_SIZE]) or 0
