"""AAC in ADTS (Audio Data Transport Stream) frames: header parsing and a streaming frame scanner.

Reference: ISO/IEC 14496-3 §1.A.2.2 (adts_frame: adts_fixed_header, adts_variable_header), the same
layout as ISO/IEC 13818-7 §6.2. An ADTS frame is self-contained: unlike mp3 there is no bit reservoir
reaching into earlier frames, so frames can be cut and joined anywhere.

Priming: an AAC encoder starts with 1024 or more samples of delay (ffmpeg's aac: 1024, its first frame),
and ADTS has no field to say so. Decoders cannot trim what they are not told, so an ADTS part decodes to
all of its frames' samples both alone and joined: a join of ADTS parts decodes to exactly the sum of its
parts, and its length is `frames * 1024` per raw data block.
"""

from __future__ import annotations

from dataclasses import dataclass

from speccyd.media import scan

HEADER_SIZE = 7  # 9 with the CRC (protection_absent 0)
SAMPLES_PER_BLOCK = 1024  # 14496-3 §4.5.2.1: a raw_data_block codes 1024 samples per channel (AAC LC)
SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
PROFILES = ("Main", "LC", "SSR", "LTP")  # profile_ObjectType is the MPEG-4 object type minus 1


@dataclass(frozen=True, slots=True)
class AdtsHeader:
    mpeg2: bool  # ID bit: 1 for MPEG-2 AAC, 0 for MPEG-4
    protected: bool  # a CRC follows the header (protection_absent 0)
    profile: int  # profile_ObjectType: 0 Main, 1 LC, 2 SSR, 3 LTP
    sample_rate_index: int
    sample_rate: int
    channel_configuration: int  # 0: defined in the stream (a PCE); 1 mono, 2 stereo, ...
    length: int  # aac_frame_length: the whole frame, header included
    blocks: int  # raw data blocks in the frame (number_of_raw_data_blocks_in_frame + 1)

    @property
    def samples(self) -> int:
        return SAMPLES_PER_BLOCK * self.blocks

    @property
    def header_length(self) -> int:
        return HEADER_SIZE + (2 if self.protected else 0)

    def same_stream(self, other: AdtsHeader) -> bool:
        return (self.mpeg2, self.profile, self.sample_rate_index, self.channel_configuration) == (
            other.mpeg2,
            other.profile,
            other.sample_rate_index,
            other.channel_configuration,
        )


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> AdtsHeader | None:
    """The ADTS header at `offset`, or None if those 7 bytes are not one."""
    if len(data) < offset + HEADER_SIZE:
        return None
    h = bytes(data[offset : offset + HEADER_SIZE])
    if h[0] != 0xFF or h[1] & 0xF6 != 0xF0:  # syncword 0xFFF, then layer 00
        return None
    rate_index = (h[2] >> 2) & 0xF
    if rate_index >= len(SAMPLE_RATES):
        return None  # indexes 13 and 14 are reserved, 15 is "escape", never in ADTS
    protected = not h[1] & 1
    length = ((h[3] & 0x03) << 11) | (h[4] << 3) | (h[5] >> 5)
    if length < HEADER_SIZE + (2 if protected else 0):
        return None
    return AdtsHeader(
        mpeg2=bool(h[1] & 0x08),
        protected=protected,
        profile=h[2] >> 6,
        sample_rate_index=rate_index,
        sample_rate=SAMPLE_RATES[rate_index],
        channel_configuration=((h[2] & 1) << 2) | (h[3] >> 6),
        length=length,
        blocks=(h[6] & 0x03) + 1,
    )


Frame = scan.Frame[AdtsHeader]


class FrameScanner(scan.Scanner[AdtsHeader]):
    """ADTS frames of a stream, with the same rules as the mp3 scanner (see speccyd.media.scan)."""

    header_size = HEADER_SIZE

    def _parse(self, data: bytes | bytearray, offset: int = 0) -> AdtsHeader | None:
        return parse_header(data, offset)


def scan_all(data: bytes) -> tuple[FrameScanner, list[Frame]]:
    scanner = FrameScanner()
    return scanner, scanner.feed(data) + scanner.finish()
