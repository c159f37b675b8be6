"""Joining mp3 parts without their encoder delay and padding, by dropping whole frames and repacking main data.

A LAME-encoded part (LAME itself, or ffmpeg's libmp3lame) starts with `delay + 529` samples that are not
the input (encoder delay, plus the decoder's filterbank delay) and ends with up to `padding - 529` more;
the part's Info frame says how many, and a decoder that reads it trims them. In a joined file only one
Info frame could apply, so each part's are dropped and every part would bring ~1600 samples (68 ms at
24 kHz) of extra silence. mp3 cannot be cut inside a frame without re-encoding, so each part drops the
whole frames nearest to that excess: `round(excess / 576)` frames, as many as possible at the start.

Dropping frames at the end of a part is safe: Layer III main data only ever reaches back into earlier
frames (ISO/IEC 11172-3 §2.4.3.4.1, the bit reservoir), and a frame's own main data ends inside its own
frame. Dropping frames at the start is not: the first kept frame's `main_data_begin` points up to 255
(MPEG-2) or 511 (MPEG-1) bytes back into the dropped ones. `FramePacker` relays those bytes: the first
kept frame gets `main_data_begin` 0 and enough room for what it used to borrow, by a higher bitrate index
when one is left (a frame's bitrate may change from frame to frame; decoders size each frame by its own
header). Later frames are rewritten only until their main data is back at its original place; from there
on every frame is copied unchanged. The Huffman data is never touched, so nothing is re-encoded, and the
repacked frames decode to exactly the samples they did before (tests/test_media_join.py checks the PCM).

When no frame can grow (160 kbit/s is the MPEG-2 maximum, and LAME keeps the reservoir full there), the
last frame to be dropped is kept instead as a silent carrier: all-zero side information (no scale
factors, no spectrum) and a slot that ends with the bytes the next frame borrows, so that frame and all
after it stay unchanged. One frame fewer goes at the start, so one more goes at the end, keeping the
length as planned (it cuts at most about half a frame of the part's last, in speech silent, samples).

The joined file's exact length is therefore `sum(kept frames) * samples_per_frame`, which is what the
read-along timeline is computed from; it differs from the sum of the parts decoded alone by less than
half a frame per part (12 ms at 24 kHz).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from speccyd.media import mpeg

# CRC-16 of Layer III frames: polynomial 0x8005, initial value 0xFFFF, over header bytes 2-3 and the side
# information (ISO/IEC 11172-3 §2.4.3.1, "error_check"); what ffmpeg checks with -err_detect crccheck.
_CRC_POLY = 0x8005


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ _CRC_POLY) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


@dataclass(frozen=True, slots=True)
class SideInfo:
    main_data_begin: int  # bytes back from this frame's main data slot where its main data starts
    main_data_bits: int  # the sum of part2_3_length over granules and channels

    @property
    def main_data_bytes(self) -> int:
        return (self.main_data_bits + 7) // 8


def max_main_data_begin(header: mpeg.FrameHeader) -> int:
    return 511 if header.version == "1" else 255  # a 9-bit field in MPEG-1, 8 bits in MPEG-2/2.5


def parse_side_info(frame: bytes, header: mpeg.FrameHeader) -> SideInfo:
    """main_data_begin and the main data length from a frame's side information.

    Layout, 11172-3 §2.4.1.7: main_data_begin (9), private bits (5 mono / 3 stereo), scfsi (4 per
    channel), then per granule (2) and channel a 59-bit block starting with part2_3_length (12).
    13818-3 §2.4.1.7 (one granule): main_data_begin (8), private bits (1 mono / 2 stereo), then per
    channel a 63-bit block starting with part2_3_length.
    """
    at = mpeg.HEADER_SIZE + (2 if header.crc else 0)
    bits = int.from_bytes(frame[at : at + header.side_info_size], "big")
    width = header.side_info_size * 8
    channels = header.channels
    if header.version == "1":
        begin_bits, position, blocks, block_bits = 9, 9 + (5 if channels == 1 else 3) + 4 * channels, 2, 59
    else:
        begin_bits, position, blocks, block_bits = 8, 8 + (1 if channels == 1 else 2), 1, 63
    total = 0
    for _ in range(blocks * channels):
        total += (bits >> (width - position - 12)) & 0xFFF
        position += block_bits
    return SideInfo(bits >> (width - begin_bits), total)


def rewrite_prefix(frame: bytes, header: mpeg.FrameHeader, *, bitrate_index: int, main_data_begin: int) -> bytes:
    """A frame's header, CRC and side information with a new bitrate index and main_data_begin."""
    prefix = bytearray(frame[: header.payload_offset])
    prefix[2] = (prefix[2] & 0x0F) | (bitrate_index << 4)
    at = mpeg.HEADER_SIZE + (2 if header.crc else 0)
    begin_bits = 9 if header.version == "1" else 8
    width = header.side_info_size * 8
    bits = int.from_bytes(prefix[at:], "big")
    keep = (1 << (width - begin_bits)) - 1
    bits = (bits & keep) | (main_data_begin << (width - begin_bits))
    prefix[at:] = bits.to_bytes(header.side_info_size, "big")
    if header.crc:
        prefix[4:6] = crc16(bytes(prefix[2:4]) + bytes(prefix[at:])).to_bytes(2, "big")
    return bytes(prefix)


def capacity(header: mpeg.FrameHeader, bitrate_index: int) -> int:
    """Bytes of main data a frame like `header` holds at another bitrate index."""
    bitrate = mpeg.BITRATES[header.version][bitrate_index]
    return mpeg.frame_length(header.version, bitrate, header.sample_rate, header.padding) - header.payload_offset


@dataclass(frozen=True, slots=True)
class Plan:
    """How many whole frames to drop at each end of a part, and what that leaves of its excess."""

    lead: int
    trail: int
    excess: int  # samples the part would decode to joined beyond what it decodes to alone
    samples_per_frame: int

    @property
    def residual(self) -> int:
        """Samples joined minus alone once the frames are dropped (negative: a little of an edge is cut)."""
        return self.excess - (self.lead + self.trail) * self.samples_per_frame


def plan(info: mpeg.InfoTag | None, samples_per_frame: int) -> Plan:
    """Frames to drop so that a part joined decodes as long as alone, within half a frame.

    Alone, ffmpeg skips `delay + 529` samples and (with a frame count) stops `padding - 529` before the
    end (libavformat/mp3dec.c). Without a trusted LAME tag nothing is trimmed alone, so nothing is dropped.
    The number of frames nearest to the excess is dropped, as many as nearest to the leading part at the
    start; what is cut beyond the excess is under half a frame of the part's edges, in speech silence.
    """
    if info is None or info.delay is None or info.padding is None:
        return Plan(0, 0, 0, samples_per_frame)
    lead = info.delay + mpeg.DECODER_DELAY
    trail = max(0, info.padding - mpeg.DECODER_DELAY) if info.frames else 0
    total = _nearest(lead + trail, samples_per_frame)
    first = min(total, _nearest(lead, samples_per_frame))
    return Plan(first, total - first, lead + trail, samples_per_frame)


def _nearest(samples: int, per_frame: int) -> int:
    return (2 * samples + per_frame) // (2 * per_frame)  # round half up


class RepackError(Exception):
    """The leading frames cannot be dropped: a kept frame's main data has nowhere to go."""


@dataclass(slots=True)
class _Pending:
    frame: mpeg.Frame
    bitrate_index: int
    begin: int  # its new main_data_begin
    payload: bytearray


class FramePacker:
    """Relays main data after leading frames are dropped: frames in, frames that decode without them out.

    Feed the part's audio frames in order, the first `drop` of which are to go. `push` returns frames
    ready to write (possibly none yet: a rewritten frame waits until the next frames show where their
    main data starts); `flush` returns the rest at the end of the part. Raises RepackError if a frame's
    main data cannot fit even at the highest bitrate; the caller then retries with `carrier=True`, which
    keeps the last of the `drop` frames as a silent frame holding the borrowed bytes.
    """

    def __init__(self, drop: int, *, carrier: bool = False) -> None:
        self._drop = drop
        self._carrier = carrier and drop > 0
        self._previous: mpeg.Frame | None = None
        self.seen = 0
        self._stream = bytearray()  # main data slots of the frames from the first dropped one on
        self._slot: list[int] = []  # where each such frame's slot starts in _stream
        self._pending: list[_Pending] = []
        self._new_end = 0  # in the new main data stream: where the last placed main data ends
        self._new_slot = 0  # in the new stream: where the next frame's slot starts
        self.aligned = drop == 0  # from here on frames pass unchanged
        self.rewritten = 0
        self.bumped = 0

    def push(self, frame: mpeg.Frame) -> list[bytes]:
        index = self.seen
        self.seen += 1
        if self.aligned:
            return [frame.data]
        header = frame.header
        self._slot.append(len(self._stream))
        self._stream += frame.data[header.payload_offset :]
        if index < self._drop:
            self._previous = frame
            return []
        side = parse_side_info(frame.data, header)
        start = self._slot[-1] - side.main_data_begin
        if start < 0 or start + side.main_data_bytes > len(self._stream):
            raise RepackError(f"frame {index} points outside the part's main data")
        if self._carrier:
            assert self._previous is not None
            self.aligned = True
            return [self._carrier_for(self._previous, self._stream[start : self._slot[-1]]), frame.data]
        begin = min(side.main_data_begin, self._new_slot - self._new_end)
        if begin == side.main_data_begin and self._pending:
            # Back in place: what lies before this frame's slot is as it was, so this frame and every
            # later one are kept as they are, once the bytes they reach back for are written.
            self._place(self._new_slot - begin, self._stream[start : self._slot[-1]])
            self.aligned = True
            return [*self._release(), frame.data]
        if begin == side.main_data_begin:
            self.aligned = True  # the first kept frame borrows nothing: nothing to repack
            return [frame.data]
        shift = side.main_data_begin - begin
        room = capacity(header, header.bitrate_index)
        need = side.main_data_bytes - begin  # bytes of this frame's main data inside its own slot
        index_for = self._bitrate_for(header, need, room + shift)
        if index_for is None:
            raise RepackError(f"frame {index}'s main data does not fit even at the highest bitrate")
        self.bumped += index_for != header.bitrate_index
        pending = _Pending(frame, index_for, begin, bytearray(capacity(header, index_for)))
        self._pending.append(pending)
        self.rewritten += 1
        self._place(self._new_slot - begin, self._stream[start : start + side.main_data_bytes])
        self._new_end = self._new_slot - begin + side.main_data_bytes
        self._new_slot += len(pending.payload)
        return []

    def flush(self) -> list[bytes]:
        """The frames still held at the end of the part (their layout is complete)."""
        self.aligned = True
        return self._release()

    def _carrier_for(self, replaced: mpeg.Frame, borrowed: bytes | bytearray) -> bytes:
        """A silent frame in place of the last dropped one, holding what the first kept frame borrows.

        Its side information is all zero (part2_3_length 0: no scale factors, no spectrum), so it decodes
        to silence; its slot ends with the borrowed bytes, so the next frame's main_data_begin is right
        as it is and every frame after it is kept unchanged.
        """
        header = replaced.header
        top = len(mpeg.BITRATES[header.version]) - 1
        fits = [i for i in range(header.bitrate_index, top + 1) if capacity(header, i) >= len(borrowed)]
        if not fits:
            raise RepackError("the borrowed main data does not fit a frame even at the highest bitrate")
        index = fits[0]
        self.rewritten += 1
        self.bumped += index != header.bitrate_index
        prefix = bytearray(replaced.data[: header.payload_offset])
        prefix[2] = (prefix[2] & 0x0F) | (index << 4)
        at = mpeg.HEADER_SIZE + (2 if header.crc else 0)
        prefix[at:] = bytes(header.side_info_size)
        if header.crc:
            prefix[4:6] = crc16(bytes(prefix[2:4]) + bytes(prefix[at:])).to_bytes(2, "big")
        return bytes(prefix) + bytes(capacity(header, index) - len(borrowed)) + bytes(borrowed)

    @staticmethod
    def _bitrate_for(header: mpeg.FrameHeader, need: int, wanted: int) -> int | None:
        """The lowest bitrate index at or above the frame's own whose slot holds `wanted` bytes (so the
        frames after it are back in place); failing that the highest, if it holds `need` (this frame's
        main data)."""
        top = len(mpeg.BITRATES[header.version]) - 1
        for index in range(header.bitrate_index, top + 1):
            if capacity(header, index) >= wanted:
                return index
        return top if capacity(header, top) >= need else None

    def _place(self, at: int, data: bytes | bytearray) -> None:
        """Write `data` at offset `at` of the new main data stream, which the held frames' slots make up
        end to end from 0 (the first held frame borrows nothing)."""
        base = 0
        for pending in self._pending:
            end = base + len(pending.payload)
            lo, hi = max(at, base), min(at + len(data), end)
            if lo < hi:
                pending.payload[lo - base : hi - base] = data[lo - at : hi - at]
            base = end

    def _release(self) -> list[bytes]:
        out = [
            rewrite_prefix(p.frame.data, p.frame.header, bitrate_index=p.bitrate_index, main_data_begin=p.begin)
            + bytes(p.payload)
            for p in self._pending
        ]
        self._pending.clear()
        self._stream.clear()
        self._slot.clear()
        return out


@dataclass(frozen=True, slots=True)
class TrimStats:
    frames_in: int  # audio frames the part had (its Info frame not counted)
    frames_out: int
    plan: Plan  # as carried out: one fewer leading frame per RepackError, one more at the end instead
    rewritten: int  # frames whose side information (and maybe bitrate) was changed
    bumped: int  # of those, frames given a higher bitrate index to make room
    held: int  # most frames held back at the start of the part


class PartTrimmer:
    """One part of a joined mp3, cleaned as its bytes arrive: its ID3v2 tag (unless kept), Info frame and
    ID3v1 tag go, whole frames of delay and padding are dropped, the first kept frames are repacked.

    Look-ahead: at the start the dropped frames and the rewritten ones are held until a frame is back in
    place (libmp3lame at 24 kHz mono: 2 dropped + 1 rewritten, so output starts with the 4th frame); at
    the end the last `plan.trail` frames (1) are held until the part ends, since only the end says which
    frames are last. In between every frame goes out as soon as it is complete.
    """

    def __init__(self, *, keep_id3: bool) -> None:
        self._scanner = mpeg.FrameScanner(keep_tag=keep_id3)
        self._keep_id3 = keep_id3
        self._tag_sent = False
        self._plan: Plan | None = None
        self._packer = FramePacker(0)
        self._head: list[mpeg.Frame] = []  # frames since the part began, while the packer may still fail
        self._tail: deque[bytes] = deque()
        self._frames_in = 0
        self._frames_out = 0
        self._held = 0

    @property
    def stats(self) -> TrimStats:
        assert self._plan is not None, "no audio frame yet"
        packer = self._packer
        return TrimStats(self._frames_in, self._frames_out, self._plan, packer.rewritten, packer.bumped, self._held)

    @property
    def samples(self) -> int:
        """Samples in the frames written so far: this part's length in the joined file once finished."""
        return self._frames_out * (self._plan.samples_per_frame if self._plan else 0)

    def feed(self, data: bytes) -> bytes:
        return self._take(self._scanner.feed(data), final=False)

    def finish(self) -> bytes:
        return self._take(self._scanner.finish(), final=True)

    def _take(self, frames: list[mpeg.Frame], *, final: bool) -> bytes:
        out = bytearray()
        if not self._tag_sent and (self._scanner.tag_done or final):
            self._tag_sent = True
            if self._keep_id3 and self._scanner.id3v2:
                out += self._scanner.id3v2
        for frame in frames:
            self._frames_in += 1
            if self._plan is None:
                self._plan = plan(self._scanner.info, frame.samples)
                self._packer = FramePacker(self._plan.lead)
            self._tail.extend(self._push(frame))
        trail = self._plan.trail if self._plan is not None else 0
        if final:
            self._tail.extend(self._packer.flush())
            for _ in range(min(trail, len(self._tail))):
                self._tail.pop()
            trail = 0
        while len(self._tail) > trail:
            out += self._tail.popleft()
            self._frames_out += 1
        return bytes(out)

    def _push(self, frame: mpeg.Frame) -> list[bytes]:
        if self._packer.aligned:
            return self._packer.push(frame)
        self._head.append(frame)
        self._held = max(self._held, len(self._head))
        try:
            ready = self._packer.push(frame)
        except RepackError:
            ready = self._replay()
        if self._packer.aligned:
            self._head.clear()
        return ready

    def _replay(self) -> list[bytes]:
        """Start the part over with one fewer leading frame dropped and one more at the end (same length).

        Nothing of the part has been written yet: the packer holds every frame until it is aligned, and
        with nothing dropped it is aligned at once, so this ends.
        """
        assert self._plan is not None
        while True:
            current = self._plan
            self._plan = Plan(current.lead - 1, current.trail + 1, current.excess, current.samples_per_frame)
            # The frame no longer dropped becomes a silent carrier of the reservoir the next one needs.
            self._packer = FramePacker(current.lead, carrier=True)
            try:
                return [data for held in self._head for data in self._packer.push(held)]
            except RepackError:
                continue
