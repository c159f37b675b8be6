"""HTTP Live Streaming of packed audio (RFC 8216 §3.4): segments cut on frame boundaries, and media playlists.

A segment is described, not held: the byte range of its frames in the audio file, its sample count and
its timestamp. Serving one is `timestamp tag + file[start:end]`, so a playlist over a 100-minute file
costs a few hundred small objects, never the audio. Segments are cut while the file grows: each is
closed for good when the next frame would take it past the target duration (or the stream ends), so a
listed segment never changes.

Why the target duration is fixed up front: RFC 8216 §4.3.3.1 makes #EXT-X-TARGETDURATION an upper bound
of every (rounded) #EXTINF, and §6.2.1 lets a server only append to an EVENT playlist, so the value in
the first playlist a player sees must hold for every segment that will ever be listed. The segmenter
never lets a segment exceed `target` seconds, so `round(target)` is right from the first reload to the
last, whatever audio arrives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from speccyd.media import id3

MIME_TYPE = "application/vnd.apple.mpegurl"  # RFC 8216 §4
# Apple's HLS authoring specification recommends 6-second segments: short enough to start quickly,
# long enough that a polling player does not reload the playlist many times a second.
DEFAULT_TARGET = 6.0
# The first segment's timestamp. 0 makes a segment's PTS / 90 kHz the same number as its start on the
# read-along timeline; RFC 8216 §3.4 only asks that it be the 33-bit timestamp of the first sample.
START_PTS = 0
# RFC 8216 §7: floating-point #EXTINF durations need version 3; nothing here needs more.
VERSION = 3


class AudioFrame(Protocol):
    """What the segmenter needs of a frame (speccyd.media.scan.Frame has it)."""

    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def sample_rate(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Segment:
    index: int  # the media sequence number (the playlist starts at 0)
    start: int  # byte range of its frames in the audio file: [start, end)
    end: int
    first_sample: int  # samples in all the segments before it
    samples: int
    sample_rate: int
    pts: int  # 90 kHz timestamp of its first sample, START_PTS for the first segment

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    @property
    def size(self) -> int:
        """Bytes served for this segment: the timestamp tag and the frames."""
        return id3.TIMESTAMP_TAG_SIZE + self.end - self.start

    def tag(self) -> bytes:
        """The ID3 tag that starts the segment's bytes (RFC 8216 §3.4)."""
        return id3.timestamp_tag(self.pts)


def pts_at(sample: int, sample_rate: int, start: int = START_PTS) -> int:
    """The 90 kHz timestamp of a sample, to the nearest tick (exact at 24 kHz: a frame is 2160 ticks)."""
    return start + (sample * id3.TIMESTAMP_CLOCK * 2 + sample_rate) // (2 * sample_rate)


def target_duration_tag(target: float) -> int:
    """#EXT-X-TARGETDURATION for segments of at most `target` s: each EXTINF rounds to at most this."""
    return max(1, math.floor(target + 0.5))


class Segmenter:
    """Cuts a growing stream of frames into segments of at most `target` seconds, on frame boundaries.

    `add` takes frames as they are found and returns the segments they close; `finish` closes the last
    one. A segment closes when the next frame would take it past the target, so each is as long as the
    target allows, and a frame arriving never changes a segment already returned.
    """

    def __init__(self, target: float = DEFAULT_TARGET, *, start_pts: int = START_PTS) -> None:
        if not target >= 1.0:  # written so that NaN is refused too
            raise ValueError("an HLS target duration is at least 1 second")
        self.target = target
        self._start_pts = start_pts
        self.segments: list[Segment] = []
        self._start = 0
        self._end = 0
        self._samples = 0
        self._rate = 0
        self._first_sample = 0  # samples before the open segment

    @property
    def samples(self) -> int:
        """Samples in every frame added so far, closed segments and the open one."""
        return self._first_sample + self._samples

    @property
    def end(self) -> int:
        """Where the last frame added so far ends in the stream (0 before the first)."""
        return self._end

    def checkpoint(self) -> Checkpoint:
        """The segmenter's whole state, to come back to with `restore` (the stream was rewound)."""
        return Checkpoint(len(self.segments), self._start, self._end, self._samples, self._rate, self._first_sample)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Back to a checkpoint: segments closed since are forgotten, the open segment is as it was."""
        if checkpoint.closed > len(self.segments):
            raise ValueError("a checkpoint from after the present")
        del self.segments[checkpoint.closed :]
        self._start, self._end, self._samples = checkpoint.start, checkpoint.end, checkpoint.samples
        self._rate, self._first_sample = checkpoint.rate, checkpoint.first_sample

    def truncate(self, count: int) -> None:
        """Keep the first `count` closed segments only; the stream goes on right after the last of them."""
        if not 0 <= count <= len(self.segments):
            raise ValueError(f"cannot keep {count} of {len(self.segments)} segments")
        del self.segments[count:]
        last = self.segments[-1] if self.segments else None
        self._samples = 0
        self._first_sample = last.first_sample + last.samples if last else 0
        self._start = self._end = last.end if last else 0
        if last is None:
            self._rate = 0

    def add(self, frames: Iterable[AudioFrame]) -> list[Segment]:
        closed: list[Segment] = []
        for frame in frames:
            if self._rate and frame.sample_rate != self._rate:
                raise ValueError(f"sample rate changed from {self._rate} to {frame.sample_rate} Hz mid-stream")
            self._rate = frame.sample_rate
            # Exact in integers: samples / rate > target  <=>  samples > target * rate.
            if self._samples and self._samples + frame.samples > self.target * self._rate:
                closed.append(self._close())
            if not self._samples:
                self._start = frame.offset
            self._end = frame.offset + frame.length
            self._samples += frame.samples
        return closed

    def finish(self) -> list[Segment]:
        """The last segment, at the end of the stream (nothing if no frame is left open)."""
        return [self._close()] if self._samples else []

    def _close(self) -> Segment:
        segment = Segment(
            index=len(self.segments),
            start=self._start,
            end=self._end,
            first_sample=self._first_sample,
            samples=self._samples,
            sample_rate=self._rate,
            pts=pts_at(self._first_sample, self._rate, self._start_pts),
        )
        self.segments.append(segment)
        self._first_sample += self._samples
        self._samples = 0
        return segment


@dataclass(frozen=True, slots=True)
class Checkpoint:
    closed: int  # segments closed at the time
    start: int
    end: int
    samples: int
    rate: int
    first_sample: int


def segment_all(frames: Iterable[AudioFrame], target: float = DEFAULT_TARGET) -> list[Segment]:
    """The segments of a complete file's frames (what a ready file's playlist lists)."""
    segmenter = Segmenter(target)
    return segmenter.add(frames) + segmenter.finish()


def extinf(segment: Segment) -> str:
    # Six decimals: durations are whole frames (24 ms at 24 kHz, so exact), and at rates like 22.05 kHz the
    # rounding stays under a microsecond per segment, far below a sample.
    return f"#EXTINF:{segment.duration:.6f},"


def media_playlist(
    segments: Sequence[Segment],
    uri: Callable[[Segment], str],
    *,
    target: float = DEFAULT_TARGET,
    complete: bool,
    event: bool,
    independent: bool = False,
    can_block_reload: bool = False,
    start_at_beginning: bool = False,
) -> str:
    """An HLS media playlist of `segments`, with segment URIs from `uri`.

    event: the playlist is (or may have been) served while the file is generating. It is then
    #EXT-X-PLAYLIST-TYPE:EVENT from the first segment to the end, #EXT-X-ENDLIST added when complete:
    RFC 8216 §6.2.1 allows a server only to append to a playlist a player may be following, so an EVENT
    playlist never turns into a VOD one. A file ready before its playlist is first asked for is VOD.
    independent: every segment decodes without the one before (§4.3.5.1): true for ADTS AAC (no frame
    refers to another), false for mp3, whose first frame in a segment may borrow main data from the
    previous segment's last frame (the bit reservoir).
    can_block_reload: the server answers _HLS_msn requests by waiting (RFC 8216bis §6.2.5.2).
    start_at_beginning: #EXT-X-START:TIME-OFFSET=0 (§4.3.5.2). Without it a client joining a playlist that has
    no #EXT-X-ENDLIST starts three target durations before its end (§6.3.3), as for live radio; a document
    being read aloud starts at its first word.
    """
    if not event and not complete:
        raise ValueError("a VOD playlist is complete by definition: use event=True while generating")
    ceiling = target_duration_tag(target)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", f"#EXT-X-TARGETDURATION:{ceiling}"]
    if can_block_reload:
        lines.append("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES")
    lines += ["#EXT-X-MEDIA-SEQUENCE:0", f"#EXT-X-PLAYLIST-TYPE:{'EVENT' if event else 'VOD'}"]
    if independent:
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if start_at_beginning:
        lines.append("#EXT-X-START:TIME-OFFSET=0")
    for segment in segments:
        if round(segment.duration) > ceiling:
            raise ValueError(f"segment {segment.index} lasts {segment.duration:.3f}s, over the target {ceiling}s")
        lines += [extinf(segment), uri(segment)]
    if complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
