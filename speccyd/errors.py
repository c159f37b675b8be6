"""The one error type handlers raise, and the middleware that turns every failure into JSON."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Stable codes for the errors aiohttp raises itself (routing, body size, ...).
_HTTP_CODES = {
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


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class StorageFull(Exception):
    """The disk holding the data dir is full: audio or database rows cannot be written."""


STORAGE_FULL_MESSAGE = "the server's disk is full; ask its owner to free space, then retry"


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except StorageFull:
        log.error("%s %s failed: the data dir's disk is full", request.method, request.rel_url.raw_path)
        return error_response(507, "storage_full", STORAGE_FULL_MESSAGE)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        message = e.reason if e.status != 413 else "request body is larger than 1 MiB"
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After", "Content-Range")}
        return error_response(e.status, code, message, headers)
    except Exception:
        # The traceback goes to the log only; the client learns nothing about internals.
        log.exception("unhandled error in %s %s", request.method, request.rel_url.raw_path)
        return error_response(500, "internal_error", "internal server error")
