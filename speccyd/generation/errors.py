"""What the generation service refuses, as domain exceptions: `web/errors.py` gives each a status and code.

Each carries the sentence the client is shown. Why a generation failed is not an exception but data
(`storage.records.Failure`, stored with the row); the codes it uses are listed here, once.
"""

from __future__ import annotations


class InvalidRequest(Exception):
    """A speech request that breaks one rule; `code` names the rule, `param` the field at fault."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class FileNotFound(Exception):
    """No such file for this user (another user's file is "not found" too, never "forbidden")."""

    def __init__(self, message: str = "no such file") -> None:
        super().__init__(message)


class FileExpired(Exception):
    """The file existed but its audio has expired."""


class GenerationFailed(Exception):
    """The file's generation failed; `code` and `upstream_status` say why (see FAILURE_CODES)."""

    def __init__(self, message: str, code: str, upstream_status: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.upstream_status = upstream_status


class NotStreamable(Exception):
    """HLS has no packed-audio segments for this format (RFC 8216 §3.4: AAC, MP3, AC-3, E-AC-3 only)."""


class QuotaExceeded(Exception):
    """A new generation would go over one of the user's limits."""


class DailyQuotaExceeded(QuotaExceeded):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until midnight UTC


class StorageQuotaExceeded(QuotaExceeded):
    """The user keeps as many bytes or files as allowed."""


class InvalidAudio(Exception):
    """Imported bytes that are not valid audio of the claimed format; the message says what is wrong."""


class AudioTooLarge(Exception):
    """An imported file larger than max_import_size."""


class UpstreamUnavailable(Exception):
    """The upstream could not be asked (down, unreachable, answering errors)."""


# Stable codes of `Failure.code`: what the apps and /v1 clients are told a generation failed of.
FAILURE_CODES = {
    "upstream_refused": "the upstream refused the request (a 4xx no retry changes; its status is kept)",
    "upstream_failed": "the upstream kept failing (429 or 5xx) through every attempt",
    "upstream_unreachable": "the upstream could not be reached",
    "upstream_timeout": "the upstream sent nothing for upstream_timeout, or took longer than upstream_deadline",
    "upstream_bad_audio": "the upstream's answer was not usable audio (wrong type, empty, endless, unjoinable)",
    "key_unusable": "the server can no longer decrypt this user's key (secrets rotated); sign in again",
    "storage_full": "the server's disk is full",
    "internal_error": "a bug in speccyd (logged with a traceback)",
}
