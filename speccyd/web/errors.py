"""The one error type handlers raise, and the middleware that turns every failure into JSON."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


class StorageFull(Exception):
    """The disk holding the data dir is full: audio or database rows cannot be written."""


STORAGE_FULL_MESSAGE = "the server's disk is full; ask its owner to free space, then retry"


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def openai_error_response(
    status: int, code: str, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    error_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": _OPENAI_CODES.get(code, code)}}
    return web.json_response(body, status=status, headers=headers)


def respond(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    if request.path.startswith(OPENAI_PREFIX):
        return openai_error_response(status, code, message, param, headers)
    return error_response(status, code, message, headers)
