"""ID3v2.4 tags: reading a tag's size, and building the few frames speccyd writes.

Three uses: every HLS packed-audio segment starts with a PRIV frame carrying its MPEG-2 timestamp (RFC 8216
§3.4); a joined mp3 starts with a title (TIT2) and chapters (CHAP/CTOC, the ID3v2 Chapter Frame Addendum);
and a tag written before its contents are known can be reserved at its final size and overwritten in place.
References: id3v2.4.0-structure (§ numbers below), id3v2.4.0-frames, id3v2-chapters-1.0.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HEADER_SIZE = 10
# RFC 8216 §3.4: the owner identifier of the PRIV frame that holds a packed-audio segment's first timestamp.
TIMESTAMP_OWNER = "com.apple.streaming.transportStreamTimestamp"
TIMESTAMP_CLOCK = 90_000  # MPEG-2 system clock ticks per second (RFC 8216 §3.4)
_PTS_MASK = (1 << 33) - 1  # the timestamp is 33 bits wide (ISO/IEC 13818-1 PTS), carried in 8 bytes
_SYNCSAFE_MAX = (1 << 28) - 1  # four bytes of 7 bits (§6.2)
_UNKNOWN_OFFSET = 0xFFFFFFFF  # CHAP: "no byte offset", times are the reference (chapters addendum §3)
_UTF8 = 3  # text encoding byte for UTF-8, new in v2.4 (id3v2.4.0-frames §4.2)


def syncsafe(value: int) -> bytes:
    """`value` as a 4-byte syncsafe integer (§6.2): 7 bits per byte, so no false MPEG sync can appear."""
    if not 0 <= value <= _SYNCSAFE_MAX:
        raise ValueError(f"{value} does not fit a syncsafe integer (max {_SYNCSAFE_MAX})")
    return bytes((value >> shift) & 0x7F for shift in (21, 14, 7, 0))


def read_syncsafe(data: bytes) -> int:
    value = 0
    for byte in data[:4]:
        value = (value << 7) | (byte & 0x7F)
    return value


def tag_size(head: bytes) -> int | None:
    """Total length of the ID3v2 tag `head` starts with (header, body, footer); 0 if none; None if unsure yet.

    None means `head` is shorter than a tag header and could still be the start of one.
    """
    if len(head) < HEADER_SIZE:
        return None if b"ID3".startswith(head[:3]) else 0
    if not head.startswith(b"ID3") or head[3] == 0xFF or head[4] == 0xFF or any(b & 0x80 for b in head[6:10]):
        return 0  # §3.1: version bytes are never $FF and size bytes never have their top bit set
    footer = HEADER_SIZE if head[5] & 0x10 else 0  # §3.1 flag d: a 10-byte footer follows the tag
    return HEADER_SIZE + read_syncsafe(head[6:10]) + footer


def frame(frame_id: str, body: bytes) -> bytes:
    """One v2.4 frame: 4-character id, syncsafe body size (§4: v2.4 sizes are syncsafe), no flags."""
    if re.fullmatch(r"[A-Z0-9]{4}", frame_id) is None:  # §4: four characters, capital A-Z and 0-9
        raise ValueError(f"not an ID3v2.4 frame id: {frame_id!r}")
    return frame_id.encode("ascii") + syncsafe(len(body)) + b"\0\0" + body


def text_frame(frame_id: str, text: str) -> bytes:
    """A text information frame (T000-TZZZ) in UTF-8."""
    if not frame_id.startswith("T") or frame_id == "TXXX":
        raise ValueError(f"{frame_id} is not a plain text frame")
    return frame(frame_id, bytes([_UTF8]) + text.encode("utf-8"))


def title_frame(title: str) -> bytes:
    return text_frame("TIT2", title)


def priv_frame(owner: str, data: bytes) -> bytes:
    """PRIV (id3v2.4.0-frames §4.27): owner identifier, a NUL, then the owner's binary data."""
    return frame("PRIV", owner.encode("latin-1") + b"\0" + data)


def timestamp_frame(pts: int) -> bytes:
    """The packed-audio timestamp PRIV frame: 8 bytes, big-endian, the low 33 bits set (RFC 8216 §3.4)."""
    if pts < 0:
        raise ValueError("a timestamp is never negative")
    return priv_frame(TIMESTAMP_OWNER, struct.pack(">Q", pts & _PTS_MASK))


def read_timestamp(data: bytes) -> int | None:
    """The packed-audio timestamp in the ID3 tag at the start of `data`, or None if there is none."""
    size = tag_size(data[:HEADER_SIZE])
    if not size:
        return None
    owner = TIMESTAMP_OWNER.encode("latin-1") + b"\0"
    at = data.find(b"PRIV", HEADER_SIZE, size)
    while at != -1:
        body = data[at + HEADER_SIZE : at + HEADER_SIZE + read_syncsafe(data[at + 4 : at + 8])]
        if body.startswith(owner) and len(body) == len(owner) + 8:
            return int(struct.unpack(">Q", body[len(owner) :])[0]) & _PTS_MASK
        at = data.find(b"PRIV", at + 4, size)
    return None


def _element_id(element_id: str) -> bytes:
    # Chapters addendum §3: a NUL-terminated string, unique in the tag, "not intended to be human readable".
    raw = element_id.encode("latin-1")
    if not raw or b"\0" in raw:
        raise ValueError(f"element id must be non-empty and without NUL: {element_id!r}")
    return raw + b"\0"


def chap_frame(element_id: str, start_ms: int, end_ms: int, title: str | None = None) -> bytes:
    """CHAP (chapters addendum §3): times in ms, byte offsets unknown ($FFFFFFFF), an embedded TIT2."""
    if not 0 <= start_ms <= end_ms <= 0xFFFFFFFF:
        raise ValueError(f"chapter times must satisfy 0 <= start <= end < 2**32 ms: {start_ms}, {end_ms}")
    body = _element_id(element_id) + struct.pack(">IIII", start_ms, end_ms, _UNKNOWN_OFFSET, _UNKNOWN_OFFSET)
    return frame("CHAP", body + (title_frame(title) if title is not None else b""))


def ctoc_frame(element_id: str, children: Sequence[str], *, top_level: bool = True, ordered: bool = True) -> bytes:
    """CTOC (chapters addendum §4): the table of contents naming the chapters' element ids in order."""
    if len(children) > 255:
        raise ValueError("a CTOC frame lists at most 255 child elements (its entry count is one byte)")
    flags = (0x02 if top_level else 0) | (0x01 if ordered else 0)  # §4: bit 1 top-level, bit 0 ordered
    body = _element_id(element_id) + bytes([flags, len(children)]) + b"".join(_element_id(c) for c in children)
    return frame("CTOC", body)


def tag(frames: Iterable[bytes], *, size: int | None = None) -> bytes:
    """An ID3v2.4 tag of these frames; with `size`, padded with zeros to exactly that many bytes (§3.3).

    A tag written at the start of a file before its contents are known can be reserved this way and later
    overwritten in place by another tag of the same `size`, so no byte after it moves.
    """
    body = b"".join(frames)
    if not body:
        raise ValueError("an ID3v2 tag holds at least one frame")
    total = HEADER_SIZE + len(body)
    if size is not None:
        if size < total:
            raise ValueError(f"the frames need {total} bytes, more than the reserved {size}")
        body += b"\0" * (size - total)  # §3.3: padding is $00 bytes after the last frame, no footer then
    # §3.1: "ID3", version 4.0, no flags (no unsynchronisation, extended header, experimental bit or footer).
    return b"ID3\x04\x00\x00" + syncsafe(len(body)) + body


def timestamp_tag(pts: int) -> bytes:
    """The ID3 tag a packed-audio segment starts with: just its timestamp (73 bytes)."""
    return tag([timestamp_frame(pts)])


TIMESTAMP_TAG_SIZE = len(timestamp_tag(0))


@dataclass(frozen=True, slots=True)
class Chapter:
    title: str
    start_ms: int
    end_ms: int


def chapter_frames(title: str | None, chapters: Sequence[Chapter]) -> list[bytes]:
    """TIT2 for the whole file, one CTOC (top-level, ordered) and one CHAP per chapter ("chp0", "chp1", ...).

    The frames' length depends only on the titles, never on the times (those are fixed 4-byte fields), so
    a tag reserved from the titles alone fits the final one exactly.
    """
    frames = [title_frame(title)] if title is not None else []
    if chapters:
        ids = [f"chp{i}" for i in range(len(chapters))]
        frames.append(ctoc_frame("toc", ids))
        frames += [chap_frame(i, c.start_ms, c.end_ms, c.title) for i, c in zip(ids, chapters, strict=True)]
    return frames


def chapter_tag(title: str | None, chapters: Sequence[Chapter], *, size: int | None = None) -> bytes:
    return tag(chapter_frames(title, chapters), size=size)
