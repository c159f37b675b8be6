"""Errors at the edge: the one table from domain exceptions to HTTP statuses and stable codes, and the envelopes.

Services and storage raise their own exceptions (storage/errors.py, security/errors.py, generation/errors.py)
and never think about HTTP; handlers raise `ApiError` only for what is about HTTP itself (a body that is not
JSON, a bad Range). The middleware (middleware.py) turns both into one JSON shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from speccyd.generation import errors as generation
from speccyd.security import errors as security
from speccyd.storage import errors as storage

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Every domain exception a request can end in: its status and stable code. None: the exception carries
# its own code (validation names the rule that failed). A subclass not listed takes its base class's row.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str | None]] = {
    generation.InvalidRequest: (400, None),
    generation.InvalidAudio: (400, "invalid_audio"),
    generation.NotStreamable: (400, "format_not_streamable"),
    security.InvalidKey: (400, "invalid_openai_token"),
    security.NotSignedIn: (401, "unauthorized"),
    security.BadAuthorization: (401, "invalid_authorization"),
    security.InvalidSession: (401, "invalid_session"),
    security.SessionExpired: (401, "session_expired"),
    security.SessionRevoked: (401, "session_revoked"),
    storage.UnknownUser: (401, "invalid_session"),
    security.KeyRejected: (401, "invalid_openai_token"),
    security.InvalidSignature: (401, "invalid_signature"),
    security.SignatureExpired: (401, "signature_expired"),
    generation.FileNotFound: (404, "not_found"),
    generation.FileExpired: (410, "expired"),
    storage.CursorTooOld: (410, "cursor_expired"),
    generation.GenerationFailed: (410, "generation_failed"),
    generation.AudioTooLarge: (413, "audio_too_large"),
    security.RateLimited: (429, "rate_limited"),
    security.TooManyFailedSignIns: (429, "too_many_failed_sign_ins"),
    generation.DailyQuotaExceeded: (429, "quota_exceeded"),
    generation.UpstreamUnavailable: (502, "upstream_unavailable"),
    generation.StorageQuotaExceeded: (507, "quota_exceeded"),
    storage.StorageFull: (507, "storage_full"),
}

# Stable codes for the errors aiohttp raises itself (routing, body size, ...).
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "rate_limited",
}

# The OpenAI-compatible API lives under this prefix and answers errors in OpenAI's envelope.
OPENAI_PREFIX = "/v1/"

# OpenAI's error "type" for each status; its SDKs pick the exception class from the status alone.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
# Where speccyd's own code differs from the one OpenAI clients know.
_OPENAI_CODES = {
    "invalid_openai_token": "invalid_api_key",
    "unauthorized": "invalid_api_key",
    "invalid_authorization": "invalid_api_key",
}


class ApiError(Exception):
    """An error about HTTP itself, raised by a handler: it already knows its status and code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.param = param  # the request field at fault, for OpenAI-style errors


def api_error(e: Exception) -> ApiError | None:
    """The HTTP answer for a domain exception, from DOMAIN_ERRORS; None for anything not listed (a bug)."""
    if isinstance(e, ApiError):
        return e
    for kind in type(e).__mro__:
        entry = DOMAIN_ERRORS.get(kind)
        if entry is not None:
            status, code = entry
            retry_after: Any = getattr(e, "retry_after", None)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            return ApiError(status, code or getattr(e, "code"), str(e), headers, getattr(e, "param", None))  # noqa: B009
    return None


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def openai_error_response(
    status: int, code: str, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    error_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": _OPENAI_CODES.get(code, code)}}
    return web.json_response(body, status=status, headers=headers)


def respond(request: web.BaseRequest, error: ApiError) -> web.Response:
    if request.path.startswith(OPENAI_PREFIX):
        return openai_error_response(error.status, error.code, error.message, error.param, error.headers)
    return error_response(error.status, error.code, error.message, error.headers)
