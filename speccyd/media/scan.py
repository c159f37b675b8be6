"""A streaming scanner for audio made of self-describing frames (mp3, ADTS AAC), shared by both formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, Self, TypeVar

from speccyd.media import id3

ID3V1_SIZE = 128  # "TAG" + 125 bytes at the very end of a file


class Header(Protocol):
    @property
    def length(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def sample_rate(self) -> int: ...
    def same_stream(self, other: Self) -> bool: ...


H = TypeVar("H", bound=Header)


@dataclass(frozen=True, slots=True)
class Frame(Generic[H]):
    offset: int  # in the stream as fed, counting every byte (tags and garbage included)
    header: H
    data: bytes = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.data)

    @property
    def samples(self) -> int:
        return self.header.samples

    @property
    def sample_rate(self) -> int:
        return self.header.sample_rate


class Scanner(Generic[H]):
    """Finds audio frames in a stream that arrives in arbitrary pieces (subclasses say which frames).

    `feed` returns the frames completed so far and keeps back what could still be the start of one;
    `finish` settles the tail. A frame is accepted only when the next frame's header right after it is
    valid and of the same stream (or the stream ends there, or only an ID3v1 tag follows), so bytes
    between frames, or a false sync inside garbage, are skipped the way decoders resynchronise. This
    costs one frame of latency: a frame is returned once the next header (4 bytes) has arrived.
    A leading ID3v2 tag is skipped (kept in `id3v2` when `keep_tag`); a subclass may hold back the first
    frame (`_first`), as mp3 does with its Xing/Info header frame.
    """

    header_size = 4

    def __init__(self, *, keep_tag: bool = False) -> None:
        self._keep_tag = keep_tag
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._tag_left: int | None = None  # bytes of the ID3v2 tag still to skip; None until known
        self._first = True  # the next frame found is the stream's first: it may be an Info frame
        self._last: H | None = None
        self._synced = False  # the buffer starts right where the last accepted frame ended
        self.id3v2: bytes | None = None
        self.id3v2_size = 0
        self.id3v1 = False
        self.skipped = 0  # bytes between frames that were not audio
        self.truncated = 0  # bytes of an incomplete last frame, dropped at the end
        self.frames = 0
        self.samples = 0

    @property
    def tag_done(self) -> bool:
        """Whether the leading ID3v2 tag (if any) has been read past."""
        return self._tag_left == 0

    @property
    def position(self) -> int:
        """Stream offset up to which every byte has been settled (returned, skipped or kept as tag)."""
        return self._base

    def _parse(self, data: bytes | bytearray, offset: int = 0) -> H | None:
        raise NotImplementedError

    def _hold_first(self, frame: Frame[H]) -> bool:
        """Whether the stream's first frame is not audio (and so is not returned)."""
        return False

    def feed(self, data: bytes) -> list[Frame[H]]:
        self._buffer += data
        return self._scan(final=False)

    def finish(self) -> list[Frame[H]]:
        """The frames the end of the stream settles; the rest is an ID3v1 tag, a truncated frame, or garbage."""
        frames = self._scan(final=True)
        if self._is_id3v1(0):
            self.id3v1 = True
        elif self._parse(self._buffer) is not None:
            self.truncated = len(self._buffer)
        else:
            self.skipped += len(self._buffer)
        self._drop(len(self._buffer))
        return frames

    def _drop(self, count: int) -> None:
        del self._buffer[:count]
        self._base += count

    def _is_id3v1(self, at: int) -> bool:
        return len(self._buffer) - at == ID3V1_SIZE and self._buffer.startswith(b"TAG", at)

    def _tag(self, final: bool) -> bool:
        """Deal with a leading ID3v2 tag; False while more bytes are needed to know."""
        if self._tag_left is None:
            size = id3.tag_size(bytes(self._buffer[: id3.HEADER_SIZE]))
            if size is None and not final:
                return False
            self._tag_left = self.id3v2_size = size or 0
        if self._tag_left:
            if self._keep_tag and len(self._buffer) < self._tag_left and not final:
                return False  # keep the tag whole, so it is one bytes object
            taken = min(self._tag_left, len(self._buffer))
            if self._keep_tag:
                self.id3v2 = bytes(self._buffer[:taken])
            self._drop(taken)
            self._tag_left -= taken
        return self._tag_left == 0

    def _scan(self, *, final: bool) -> list[Frame[H]]:
        out: list[Frame[H]] = []
        if not self._tag(final):
            return out
        buffer = self._buffer
        at = 0
        while True:
            if self._synced and at == 0:
                # Right after a frame: a valid header of the same stream is trusted, as decoders do.
                if len(buffer) <= ID3V1_SIZE and b"TAG"[: len(buffer)] == buffer[:3]:
                    break  # maybe the ID3v1 tag that ends the file: only the end tells
                header = self._parse(buffer)
                # `is`: parsers cache their headers, so the frames of one stream mostly share one object.
                if (
                    header is not None
                    and self._last is not None
                    and (header is self._last or self._last.same_stream(header))
                ):
                    length = header.length
                    if len(buffer) < length:
                        break  # the rest of the frame has not arrived (at the end: it never will)
                    out += self._accept(header, bytes(buffer[:length]))
                    self._drop(length)
                    continue
                if len(buffer) < self.header_size and not final:
                    break
                self._synced = False  # garbage here: look for a header the next one confirms
                at = 1
            at = buffer.find(b"\xff", at)
            if at == -1:
                at = len(buffer)  # no sync byte anywhere: all of it is garbage
                break
            header = self._parse(buffer, at)
            if header is None or (self._last is not None and not self._last.same_stream(header)):
                if header is None and len(buffer) - at < self.header_size and not final:
                    break  # could be the start of a header
                at += 1
                continue
            verdict = self._verdict(header, at, final)
            if verdict is None:
                break
            if not verdict:
                at += 1
                continue
            self.skipped += at
            self._drop(at)
            out += self._accept(header, bytes(buffer[: header.length]))
            self._drop(header.length)
            at = 0
        self.skipped += at
        self._drop(at)
        return out

    def _verdict(self, header: H, at: int, final: bool) -> bool | None:
        """Whether a header found by searching starts a real frame; None while that cannot be known yet.

        It does if the next frame's header follows right after it, or the stream ends there (or with just
        an ID3v1 tag). A random 0xFF byte passes the header check about one time in twenty; needing two
        in a row at the right distance makes a false lock rare.
        """
        buffer = self._buffer
        end = at + header.length
        if len(buffer) < end:
            return None  # incomplete; at the end of the stream the rest is a truncated frame
        if len(buffer) >= end + self.header_size:
            following = self._parse(buffer, end)
            if following is not None and header.same_stream(following):
                return True
        rest = len(buffer) - end
        if final:
            return rest == 0 or self._is_id3v1(end)
        if rest < self.header_size or (rest <= ID3V1_SIZE and buffer.startswith(b"TAG"[: min(rest, 3)], end)):
            return None
        return False

    def _accept(self, header: H, data: bytes) -> list[Frame[H]]:
        found = Frame(self._base, header, data)
        self._last = header
        self._synced = True
        if self._first:
            self._first = False
            if self._hold_first(found):
                return []
        self.frames += 1
        self.samples += header.samples
        return [found]
