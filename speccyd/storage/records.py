"""What the storage layer hands out and takes in: plain frozen dataclasses, and the refusals of its queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class FileRow:
    id: str
    user_id: str
    content_hash: str
    status: str
    model: str
    voice: str
    format: str
    speed: float
    instructions: str | None
    text: str
    characters: int
    size_bytes: int | None
    sha256: str | None
    error: str | None
    created_at: float
    updated_at: float
    expires_at: float
    # Why a generation failed, as data (see `Failure`); the message above is for people.
    error_code: str | None = None
    upstream_status: int | None = None
    # While generating: the bytes its audio is expected to take, counted against storage_quota until the real
    # size replaces it (migration 6).
    reserved_bytes: int | None = None
    # What the upstream billed for it, when it said (gpt-4o-mini-tts over SSE); None otherwise.
    input_tokens: int | None = None
    output_tokens: int | None = None
    # The audio's length once ready (from its sample count), and where its user last stopped listening.
    duration_s: float | None = None
    position_s: float | None = None
    position_device: str | None = None
    position_at: float | None = None

    def is_expired(self, now: float) -> bool:
        return self.status != "generating" and self.expires_at <= now


@dataclass(frozen=True)
class Failure:
    """Why a generation failed: a stable code, the upstream's HTTP status if it answered one, and a message."""

    code: str
    message: str
    upstream_status: int | None = None


@dataclass(frozen=True)
class NewFile:
    """What a generation request asks for; the row is created from it."""

    content_hash: str
    model: str
    voice: str
    format: str
    speed: float
    instructions: str | None
    text: str
    reserved_bytes: int | None = None  # the audio's estimated size, held against storage_quota meanwhile


@dataclass(frozen=True)
class TokenUsage:
    """Tokens an upstream billed for one generation (input text, output audio)."""

    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Claim:
    """The outcome of asking for audio: an existing row, or a new generation to start."""

    row: FileRow
    created: bool
    replaced: FileRow | None  # an old failed or expired row whose audio file must now be removed


@dataclass(frozen=True)
class Hit:
    """A cache hit answered from memory, written later by `record_hits`."""

    file_id: str
    user_id: str
    model: str
    characters: int
    at: float
    expires_at: float
    # The tokens the hit's audio was billed when generated: what the hit saved, priced as it was paid.
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    first_seen: float
    last_seen: float
    files_count: int
    storage_bytes: int
    generated_today: int
    characters_today: int


@dataclass(frozen=True)
class Limits:
    """Per-user limits; 0 means none. As overrides, None means "the server-wide setting"."""

    daily_chars: int
    storage_bytes: int
    max_files: int


NO_LIMITS = Limits(0, 0, 0)


@dataclass(frozen=True)
class LimitOverrides:
    daily_chars: int | None = None
    storage_bytes: int | None = None
    max_files: int | None = None

    def apply(self, defaults: Limits) -> Limits:
        return Limits(
            defaults.daily_chars if self.daily_chars is None else self.daily_chars,
            defaults.storage_bytes if self.storage_bytes is None else self.storage_bytes,
            defaults.max_files if self.max_files is None else self.max_files,
        )


@dataclass(frozen=True)
class UsageLine:
    """Usage events of one user, model and kind in a time window.

    kind: 'generated' (sent upstream, counted from the moment it is, even if later deleted), 'failed' (sent
    upstream, no audio: it counts against the daily quota, not in cost) or 'cache_hit'.
    """

    user_id: str
    model: str
    kind: str
    events: int
    characters: int
    tokens: int | None
    input_tokens: int | None = None
    output_tokens: int | None = None
    # The characters of the events whose tokens are known (priced by token, not by character).
    tokened_characters: int = 0


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    created_at: float
    last_seen: float
    files_count: int
    storage_bytes: int
    sessions_valid_after: float
    overrides: LimitOverrides


@dataclass(frozen=True)
class PurgeFilter:
    expired: bool = False
    all: bool = False
    user_id: str | None = None
    older_than: float | None = None  # seconds


@dataclass(frozen=True)
class Tombstone:
    """A file that is gone (deleted by its user or a purge, or expired), as device sync reports it."""

    seq: int
    file_id: str
    content_hash: str
    reason: str
    at: float


@dataclass(frozen=True)
class ChangePage:
    """One page of a user's library changes, in change order."""

    files: list[tuple[int, FileRow]]  # (seq, row)
    tombstones: list[Tombstone]
    next_cursor: int
    has_more: bool


class TimedPiece(NamedTuple):
    """One piece of text on the read-along timeline, and how many samples of audio it became."""

    text_start: int  # code points into the file's text; the pieces tile it with no gap and no overlap
    text_end: int
    samples: int


class ByteSegment(NamedTuple):
    """One HLS segment: the byte range of its frames in the audio file, and their samples."""

    start: int
    end: int
    samples: int


class TimedChapter(NamedTuple):
    title: str
    text_start: int
    sample: int  # the first sample of its heading's audio


@dataclass(frozen=True)
class TimelineRecord:
    """What the timeline and the playlist of a finished file are made of, kept with the file.

    run: names this audio in segment URIs, so a URI never serves other bytes (a generation started over
    after a restart has another run). served_live: a playlist of it was served while it was generating,
    so it stays an EVENT playlist for good (RFC 8216 §6.2.1 lets a followed playlist only grow).
    """

    run: str
    sample_rate: int  # 0 when the audio had no countable samples
    pieces: tuple[TimedPiece, ...]
    segments: tuple[ByteSegment, ...]
    chapters: tuple[TimedChapter, ...]
    served_live: bool

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.pieces)

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0
