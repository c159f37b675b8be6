"""The read-along timeline and the HLS segments of a file, counted from the audio as the assembler writes it.

The assembler (assembly.py) tells the tracker where each piece begins, every byte it writes, where a failed
attempt rewinds to and where a piece ends. mp3 and ADTS bytes go through a frame scanner into the HLS
segmenter, so segments are listed as soon as their frames exist (the first after ~6 s of audio, not when a
whole upstream call is done) and every time on the timeline is a count of samples actually produced. WAV and
PCM are counted in whole sample frames; Ogg Opus and FLAC, never joined, are read once complete.

A listed segment never changes (RFC 8216 §6.2.1). A rewind only takes back the current piece, and only as
far as no playlist already served has listed: segments closed but never served are forgotten, the ones a
player may hold are kept (see docs/streaming.md, "Rewinds and listed segments").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speccyd.generation.textplan import Plan, plan_text
from speccyd.generation.upstream import UpstreamError
from speccyd.media import adts, duration, hls, mpeg, scan
from speccyd.storage.records import ByteSegment, TimedChapter, TimedPiece, TimelineRecord

HLS_FORMATS = ("mp3", "aac")  # packed audio (RFC 8216 §3.4) exists for these; wav, pcm, flac, opus have none
SEGMENT_TARGET = hls.DEFAULT_TARGET
_HEAD = 64 * 1024  # bytes kept from the start of a WAV, Opus or FLAC file to find its layout
_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Frame:
    """A scanned frame at its place in the file (scanners count from where their stream began)."""

    offset: int
    length: int
    samples: int
    sample_rate: int


def _scanner(fmt: str) -> scan.Scanner[mpeg.FrameHeader] | scan.Scanner[adts.AdtsHeader]:
    return mpeg.FrameScanner() if fmt == "mp3" else adts.FrameScanner()


class LiveTimeline:
    def __init__(self, run: str, fmt: str, target: float = SEGMENT_TARGET) -> None:
        self.run = run  # names this audio in segment URIs (see TimelineRecord)
        self.fmt = fmt
        self.target = target
        self.plan: Plan | None = None
        self.text_length = 0
        self.header_final = True  # False while bytes at the start may still change (WAV sizes, mp3 chapters)
        self.segmenter = hls.Segmenter(target) if fmt in HLS_FORMATS else None
        self.sample_rate = duration.PCM_RATE if fmt == "pcm" else duration.OPUS_RATE if fmt == "opus" else 0
        self.piece_samples: list[int] = []  # of the pieces completely written, in order
        self.served = 0  # segments listed in a playlist that was sent: they can never be taken back
        self.complete = False
        self.event: bool | None = None  # the playlist type, fixed when sealed: EVENT iff one was served live
        self._base = 0  # file offset where the current attempt's bytes begin
        self._piece_start = 0
        self._checkpoint: hls.Checkpoint | None = None
        self._start_samples = 0
        self._scan: scan.Scanner[mpeg.FrameHeader] | scan.Scanner[adts.AdtsHeader] | None = None
        self._bytes = 0  # WAV and PCM: bytes of the current piece's attempt
        self._head = bytearray()  # WAV: the joined header, until its layout is known
        self._layout: duration.WavLayout | None = None

    def begin(self, plan: Plan, text_length: int, *, header_final: bool) -> None:
        self.plan, self.text_length, self.header_final = plan, text_length, header_final

    @property
    def streamable(self) -> bool:
        return self.segmenter is not None

    @property
    def samples(self) -> int:
        """Samples of audio written so far."""
        if self.segmenter is not None:
            return self.segmenter.samples
        return sum(self.piece_samples) + self._current_samples()

    def _current_samples(self) -> int:
        if self.fmt == "pcm":
            return self._bytes // duration.PCM_BLOCK
        if self.fmt == "wav" and self._layout is not None:
            header = self._layout.data_offset if not self.piece_samples else 0
            return max(0, self._bytes - header) // self._layout.block_align
        return 0

    # --- fed by the assembler ---

    def begin_piece(self, offset: int) -> None:
        self._piece_start = self._base = offset
        self._start_samples = self.samples
        if self.segmenter is not None:
            self._checkpoint = self.segmenter.checkpoint()
            self._scan = _scanner(self.fmt)
        self._bytes = 0

    def feed(self, data: bytes) -> None:
        if self._scan is not None:
            self._add(self._scan.feed(data))
        elif self.fmt == "wav" and not self.piece_samples and self._layout is None:
            self._head += data[: _HEAD - len(self._head)]
            self._layout = duration.wav_layout(bytes(self._head))
            if self._layout is not None:
                self.sample_rate = self._layout.sample_rate
        self._bytes += len(data)

    def _add(self, frames: list[scan.Frame[mpeg.FrameHeader]] | list[scan.Frame[adts.AdtsHeader]]) -> None:
        assert self.segmenter is not None
        if frames and not self.sample_rate:
            self.sample_rate = frames[0].sample_rate
        try:
            self.segmenter.add(_Frame(self._base + f.offset, f.length, f.samples, f.sample_rate) for f in frames)
        except ValueError:
            # The sample rate changed between parts: no segment may mix two, and players do not switch rates
            # gaplessly inside one file. OpenAI sends 24 kHz throughout; another upstream doing this is broken.
            raise UpstreamError(
                "the upstream's audio changed its sample rate between parts; it cannot be joined",
                retryable=False,
                code="upstream_bad_audio",
            ) from None

    def protected_end(self) -> int:
        """Where the last segment a served playlist listed ends: bytes before it must never change."""
        if self.segmenter is None or not self.served:
            return 0
        return self.segmenter.segments[self.served - 1].end

    def rewind(self, offset: int) -> None:
        """The current piece's attempt failed; the next one's bytes are written from `offset` (see assembly)."""
        if self.segmenter is not None:
            if offset <= self._piece_start:
                assert self._checkpoint is not None
                self.segmenter.restore(self._checkpoint)
            else:
                self.segmenter.truncate(self.served)  # offset is the end of the last served segment
            self._scan = _scanner(self.fmt)
        if offset <= self._piece_start and self.fmt == "wav" and not self.piece_samples:
            self._head.clear()
            self._layout = None
        self._base = offset
        self._bytes = 0

    def end_piece(self) -> None:
        if self._scan is not None:
            self._add(self._scan.finish())
            self._scan = None
        self.piece_samples.append(self.samples - self._start_samples)
        self._bytes = 0

    def finish(self, head: bytes, tail: bytes, size: int) -> None:
        """Every piece is written: close the last segment; count what can only be counted whole."""
        if self.segmenter is not None:
            self.segmenter.finish()
        if len(self.piece_samples) != 1:
            return
        counted: int | None = None
        if self.fmt == "opus":
            counted = duration.opus_samples(head, tail)
        elif self.fmt == "flac":
            found = duration.flac_samples(head, tail)
            if found is not None:
                self.sample_rate, counted = found
        elif self.fmt == "wav":
            # A single upstream file, passed through: its data chunk's own size (a LIST chunk may follow).
            layout = duration.wav_layout(head)
            if layout is not None:
                self.sample_rate = layout.sample_rate
                declared = int.from_bytes(head[layout.data_offset - 4 : layout.data_offset], "little")
                data = min(declared, size - layout.data_offset)
                counted = max(0, data) // layout.block_align
        if counted is not None:
            self.piece_samples[0] = counted

    def seal(self) -> None:
        """The timeline is complete: from now on the playlist ends, as EVENT if one was served live, else VOD."""
        self.complete = True
        self.event = self.served > 0

    def note_served(self, listed: int) -> None:
        """A playlist listing the first `listed` segments is being sent: they are now a promise."""
        if not self.complete:
            self.served = max(self.served, listed)

    # --- what it knows, in the stored shape ---

    def segments(self) -> list[hls.Segment]:
        return list(self.segmenter.segments) if self.segmenter is not None else []

    def record(self) -> TimelineRecord:
        """The timeline as far as it is known: complete pieces, closed segments, chapters already timed."""
        plan = self.plan
        pieces: list[TimedPiece] = []
        chapters: list[TimedChapter] = []
        if plan is not None:
            tiles = plan.tiles(self.text_length)
            starts = [0]
            for (a, b), samples in zip(tiles, self.piece_samples, strict=False):
                pieces.append(TimedPiece(a, b, samples))
                starts.append(starts[-1] + samples)
            timed = [c for c in plan.chapters if c.piece < len(starts)]
            chapters = [TimedChapter(c.title, c.text_start, starts[c.piece]) for c in timed]
        segments = tuple(ByteSegment(s.start, s.end, s.samples) for s in self.segments())
        return TimelineRecord(
            run=self.run,
            sample_rate=self.sample_rate,
            pieces=tuple(pieces),
            segments=segments,
            chapters=tuple(chapters),
            served_live=bool(self.event),
        )


def hls_segments(record: TimelineRecord) -> list[hls.Segment]:
    """A stored timeline's segments as the playlist lists them (timestamps from the sample counts)."""
    out: list[hls.Segment] = []
    first = 0
    for index, s in enumerate(record.segments):
        pts = hls.pts_at(first, record.sample_rate)
        out.append(hls.Segment(index, s.start, s.end, first, s.samples, record.sample_rate, pts))
        first += s.samples
    return out


def read_edges(path: Path) -> tuple[bytes, bytes]:
    """The first and last bytes of a file: where WAV, Opus and FLAC keep what says how long they are."""
    with path.open("rb") as f:
        head = f.read(_HEAD)
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - duration.TAIL_BYTES))
        return head, f.read()


def read_timeline(path: Path, fmt: str, text: str, run: str) -> TimelineRecord:
    """The timeline of a stored file that has none (made before speccyd kept timelines): one piece for the
    whole text, its samples and segments counted from the file itself. Blocking: run it on a thread."""
    timeline = LiveTimeline(run, fmt)
    timeline.begin(plan_text(text, len(text), joinable=False), len(text), header_final=True)
    timeline.begin_piece(0)
    size = 0
    with path.open("rb") as f:
        head = f.read(_HEAD)
        block = head
        while block:
            timeline.feed(block)
            size += len(block)
            block = f.read(_BLOCK)
        f.seek(max(0, size - duration.TAIL_BYTES))
        tail = f.read()
    timeline.end_piece()
    timeline.finish(head, tail, size)
    timeline.seal()
    return timeline.record()
