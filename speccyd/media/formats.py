"""The audio formats speccyd serves, as OpenAI names them, and their media types."""

from __future__ import annotations

CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
FORMATS = tuple(CONTENT_TYPES)

# Bytes of audio per second as OpenAI sends each format (24 kHz mono; mp3 and aac at about 160 and 128 kbit/s,
# opus at 32, flac about 60 % of PCM), and speech at about 15 characters a second at speed 1: what a generation
# in flight is expected to store, held against storage_quota until its real size is known. Deliberately on
# the high side: an estimate that is too low lets concurrent requests slip past the quota together.
_BYTES_PER_SECOND = {"mp3": 20_000, "opus": 4_000, "aac": 16_000, "flac": 30_000, "wav": 48_000, "pcm": 48_000}
_CHARACTERS_PER_SECOND = 15


def estimated_audio_bytes(fmt: str, speed: float, characters: int) -> int:
    """The expected size of the audio for `characters` of text at `speed` (slower speech is longer audio)."""
    seconds = characters / _CHARACTERS_PER_SECOND / speed
    return int(seconds * _BYTES_PER_SECOND.get(fmt, 48_000)) + 1024
