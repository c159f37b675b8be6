"""What a speech request may contain, how it is validated, and its content hash."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from speccyd.config.settings import Settings
from speccyd.generation.errors import InvalidRequest
from speccyd.media.formats import FORMATS, estimated_audio_bytes
from speccyd.media.join import JOINABLE
from speccyd.storage.contenthash import content_hash_v2
from speccyd.storage.records import NewFile

# OpenAI's, the defaults of the `voices`, `models` and `instruction_models` settings (config/settings.py).
VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova",
    "onyx", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
INSTRUCTION_MODELS = ("gpt-4o-mini-tts",)  # tts-1 and tts-1-hd ignore instructions; refuse instead
MAX_INSTRUCTIONS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# OpenAI's dated snapshots: "gpt-4o-mini-tts-2025-12-15" is gpt-4o-mini-tts as of that day.
_SNAPSHOT = re.compile(r"(.+)-(\d{4})-(\d{2})-(\d{2})")


@dataclass(frozen=True)
class SpeechChoices:
    """What a request may name: the models and voices of the upstream, and which models take instructions."""

    models: tuple[str, ...] = MODELS
    voices: tuple[str, ...] = VOICES
    instruction_models: tuple[str, ...] = INSTRUCTION_MODELS

    @classmethod
    def of(cls, settings: Settings) -> SpeechChoices:
        return cls(settings.models, settings.voices, settings.instruction_models)

    def base_model(self, model: str) -> str | None:
        """The listed model `model` names (itself, or the model a dated snapshot is of); None if none."""
        if model in self.models:
            return model
        match = _SNAPSHOT.fullmatch(model)
        if match is not None and match.group(1) in self.models:
            return match.group(1)
        return None


DEFAULT_CHOICES = SpeechChoices()


# The current content hash (storage/contenthash.py, README "The content hash"); apps compute it offline too.
content_hash = content_hash_v2


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str
    model: str
    format: str
    speed: float
    instructions: str | None
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = content_hash(self.model, self.voice, self.format, self.speed, self.instructions, self.text)
        object.__setattr__(self, "content_hash", digest)  # frozen: computed once, used on every hit

    def new_file(self) -> NewFile:
        return NewFile(
            content_hash=self.content_hash,
            model=self.model,
            voice=self.voice,
            format=self.format,
            speed=self.speed,
            instructions=self.instructions,
            text=self.text,
            reserved_bytes=estimated_audio_bytes(self.format, self.speed, len(self.text)),
        )


def _is_unicode(value: str) -> bool:
    """JSON can carry lone surrogates ("\\ud800"); they cannot be hashed or sent upstream as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _choice(body: dict[str, Any], key: str, default: str, allowed: tuple[str, ...], code: str) -> str:
    value = body.get(key, default)
    if value not in allowed:
        raise InvalidRequest(code, f"{key} must be one of: {', '.join(allowed)}", key)
    return str(value)


def _bad_instructions(message: str) -> InvalidRequest:
    return InvalidRequest("invalid_instructions", message, "instructions")


def parse_speech_request(
    body: dict[str, Any],
    max_text_chars: int,
    upstream_max_chars: int = 4096,
    choices: SpeechChoices = DEFAULT_CHOICES,
) -> SpeechRequest:
    """Validate a generate request; each rule fails with its own error code.

    Text longer than `upstream_max_chars` is split and its audio joined, which only some formats allow.
    """
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("invalid_text", "text must be a non-empty string", "text")
    if not _is_unicode(text):
        raise InvalidRequest("invalid_text", "text must be valid Unicode (it has a lone surrogate)", "text")
    if len(text) > max_text_chars:
        raise InvalidRequest("text_too_long", f"text is {len(text)} characters; the limit is {max_text_chars}", "text")
    # Defaults: the first of each list (alloy and tts-1 for OpenAI's).
    voice = _choice(body, "voice", choices.voices[0], choices.voices, "invalid_voice")
    model_value = body.get("model", choices.models[0])
    base = choices.base_model(model_value) if isinstance(model_value, str) else None
    if base is None:
        raise InvalidRequest(
            "invalid_model", f"model must be one of: {', '.join(choices.models)} (or a dated snapshot of one)", "model"
        )
    model = str(model_value)
    fmt = _choice(body, "format", "mp3", FORMATS, "invalid_format")
    if len(text) > upstream_max_chars and fmt not in JOINABLE:
        raise InvalidRequest(
            "format_not_joinable",
            f"format {fmt} cannot be joined from parts, so its text is limited to {upstream_max_chars} characters; "
            f"this text is {len(text)}: use one of {', '.join(JOINABLE)} for long text",
            "format",
        )

    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed):
        raise InvalidRequest("invalid_speed", f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}", "speed")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidRequest("invalid_speed", f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}", "speed")

    instructions = body.get("instructions")
    if instructions == "":
        instructions = None  # "no instructions", with any model (an empty string changes nothing upstream)
    if instructions is not None:
        if not isinstance(instructions, str) or not _is_unicode(instructions):
            raise InvalidRequest(
                "invalid_instructions", "instructions must be a string of valid Unicode", "instructions"
            )
        if len(instructions) > MAX_INSTRUCTIONS:
            raise InvalidRequest(
                "invalid_instructions", f"instructions are limited to {MAX_INSTRUCTIONS} characters", "instructions"
            )
        if base not in choices.instruction_models:
            raise InvalidRequest(
                "invalid_instructions",
                f"instructions only work with {', '.join(choices.instruction_models) or 'no model of this server'}",
                "instructions",
            )
    # Rounded as the content hash rounds it, so the upstream hears exactly what the hash names.
    return SpeechRequest(text, voice, model, fmt, round(float(speed), 2), instructions)


# JSON's longest spelling of one character is a surrogate pair of escapes, "\ud83d\ude00": 12 bytes.
_MAX_JSON_BYTES_PER_CHAR = 12
# The other fields, their names, quotes and a little whitespace.
_BODY_SLACK = 64 * 1024


def max_body_bytes(max_text_chars: int) -> int:
    """The request body limit: a text of `max_text_chars` characters with the longest instructions fits in it
    however its JSON is encoded (escapes and surrogate pairs included)."""
    return _MAX_JSON_BYTES_PER_CHAR * (max_text_chars + MAX_INSTRUCTIONS) + _BODY_SLACK
