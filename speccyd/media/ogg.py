"""Ogg Opus, checked page by page: every page's CRC, one logical stream in sequence from its first page to
its last (EOS), the OpusHead and OpusTags headers, and audio packets that are not empty.

References: RFC 3533 (the Ogg page: capture pattern, header type flags, granule position, serial, sequence
number, CRC, lacing values) and RFC 7845 (Ogg Opus: §5.1 OpusHead, §5.2 OpusTags, §3 the headers each on
their own pages). Packet contents are not decoded; RFC 6716 §3.4 R1 (a packet has at least one byte) is.
"""

from __future__ import annotations

import struct
import zlib

from speccyd.media.validate import AudioError, AudioInfo, Validator

_HEADER = 27  # fixed part of a page header
_MAX_PAGE = _HEADER + 255 + 255 * 255
OPUS_RATE = 48000  # RFC 7845 §4: granule positions count 48 kHz samples, whatever the input rate was
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def page_crc(page: bytes) -> int:
    """RFC 3533's CRC-32 (polynomial 0x04C11DB7, MSB first, no reflection, initial 0, no final XOR).

    zlib computes the reflected variant of the same polynomial in C: fed the page with every byte's bits
    reversed, its register holds the bit-reversed Ogg CRC. (A Python loop would take seconds per 100 MB.)
    """
    register = ~zlib.crc32(page.translate(_REVERSED), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{register:032b}"[::-1], 2)


class OpusValidator(Validator):
    format = "opus"

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._pages = 0
        self._serial: int | None = None
        self._ended = False  # the EOS page has been seen
        self._packet = bytearray()  # a packet continued onto the next page
        self._continued = False  # the last page ended inside a packet
        self._packets = 0  # packets completed: 1 is OpusHead, 2 OpusTags, then audio
        self._granule = 0
        self._pre_skip = 0
        self._channels = 0

    def _feed(self, data: bytes) -> None:
        self._buf += data
        while self._page():
            pass

    def _page(self) -> bool:
        buf = self._buf
        if len(buf) < _HEADER:
            return False
        if buf[:4] != b"OggS":
            where = f"at byte {self.size - len(buf)}" if self._pages else "at the start"
            raise self.refuse(f"not opus audio: no Ogg page {where}")
        segments = buf[26]
        if len(buf) < _HEADER + segments:
            return False
        lacing = buf[_HEADER : _HEADER + segments]
        length = _HEADER + segments + sum(lacing)
        if len(buf) < length:
            return False
        page = bytes(buf[:length])
        del buf[:length]
        self._check_page(page, lacing)
        return True

    def _check_page(self, page: bytes, lacing: bytes | bytearray) -> None:
        number = self._pages + 1
        version, flags = page[4], page[5]
        granule, serial, sequence, crc = struct.unpack("<qIII", page[6:26])
        if version != 0 or flags & ~0x07:
            raise AudioError(f"page {number} has an unknown Ogg version or flags")
        if page_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise AudioError(f"page {number} fails its CRC: the file is damaged")
        if self._ended:
            raise AudioError(f"page {number} comes after the end-of-stream page")
        if self._serial is None:
            if not flags & 0x02:
                raise AudioError("the first page does not begin a stream")
            self._serial = serial
        elif serial != self._serial or flags & 0x02:
            raise AudioError(f"page {number} belongs to another stream: one Opus stream per file")
        if sequence != self._pages:
            raise AudioError(f"page {number} has sequence number {sequence}: pages are missing")
        if bool(flags & 0x01) != self._continued:
            raise AudioError(f"page {number} does not continue the packet the page before it left open")
        self._pages += 1
        before = self._packets
        at = _HEADER + len(lacing)
        for value in lacing:
            self._packet += page[at : at + value]
            at += value
            if value < 255:
                self._packet_done()
        self._continued = bool(lacing) and lacing[-1] == 255
        # RFC 7845 §3: OpusHead alone on the first page; audio begins on a page after OpusTags ends.
        if self._pages == 1 and (self._packets != 1 or self._continued):
            raise AudioError("the first page must hold OpusHead alone")
        if before < 2 <= self._packets and (self._packets > 2 or self._continued):
            raise AudioError("audio starts on the page that ends OpusTags; it must begin on a new page")
        if self._packets > before and granule != -1:
            if self._packets > 2 and granule < self._granule:
                raise AudioError(f"page {number}'s granule position goes backwards")
            self._granule = granule
        if flags & 0x04:
            self._ended = True

    def _packet_done(self) -> None:
        packet, self._packet = bytes(self._packet), bytearray()
        self._packets += 1
        if self._packets == 1:
            self._opus_head(packet)
        elif self._packets == 2:
            if not packet.startswith(b"OpusTags") or len(packet) < 16:
                raise AudioError("the second packet is not OpusTags")
        elif not packet:
            raise AudioError(f"audio packet {self._packets - 2} is empty (an Opus packet has at least one byte)")

    def _opus_head(self, packet: bytes) -> None:
        if not packet.startswith(b"OpusHead"):
            raise AudioError("an Ogg file, but its first packet is not OpusHead: not Opus audio")
        if len(packet) < 19 or packet[8] >> 4 != 0:
            raise AudioError("OpusHead is too short or of an unknown version")
        self._channels, self._pre_skip = packet[9], struct.unpack("<H", packet[10:12])[0]
        family = packet[18]
        if self._channels == 0 or (family == 0 and self._channels > 2):
            raise AudioError(f"OpusHead says {self._channels} channels with mapping family {family}")
        if family != 0 and len(packet) < 21 + self._channels:
            raise AudioError("OpusHead's channel mapping table is cut short")

    def _finish(self) -> AudioInfo:
        if self._buf:
            if self._pages == 0 and self._buf[:4] != b"OggS"[: len(self._buf)]:
                raise self.refuse("not opus audio: no Ogg page at the start")
            raise AudioError(f"the file is truncated: page {self._pages + 1} is cut short")
        if self._packets < 2:
            raise AudioError("the file ends before its OpusHead and OpusTags headers")
        if not self._ended:
            raise AudioError("the file is truncated: its last page does not end the stream (no EOS)")
        if self._packets == 2:
            raise AudioError("the stream has no audio packets")
        seconds = max(0, self._granule - self._pre_skip) / OPUS_RATE
        return AudioInfo(self.format, self.size, seconds, OPUS_RATE, self._channels)
