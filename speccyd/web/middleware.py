"""The middlewares: every failure becomes a JSON error; a body speccyd would not read is refused before a byte
of it is read; every request is counted (when metrics are on)."""

from __future__ import annotations

import logging

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from speccyd.ops.metrics import Metrics
from speccyd.storage.errors import StorageFull
from speccyd.web.common import OWN_BODY_LIMIT
from speccyd.web.errors import HTTP_CODES, ApiError, Handler, api_error, respond

log = logging.getLogger(__name__)


# Answers after which the rest of the request's body is not read: the connection closes instead
# (protocol.PROTOCOL_DEFAULTS turns aiohttp's lingering read off).
_BODY_REFUSED = {408, 413, 415}


def too_large(request: web.BaseRequest) -> ApiError:
    limit = request.client_max_size
    return ApiError(
        413,
        "body_too_large",
        f"request body is larger than {limit:,} bytes (enough for the longest text in any JSON encoding)",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = HTTP_CODES.get(e.status, "http_error")
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After", "Content-Range")}
        error = too_large(request) if e.status == 413 else ApiError(e.status, code, e.reason, headers)
    except RequestPayloadError as e:
        # The body broke its own framing half way (a bad chunk size, a cut chunk): the client's fault.
        error = ApiError(400, "bad_request", f"the request body is malformed: {e}")
    except Exception as e:
        found = api_error(e)
        if found is None:
            # The traceback goes to the log only; the client learns nothing about internals.
            log.exception("unhandled error in %s %s", request.method, request.rel_url.raw_path)
            found = ApiError(500, "internal_error", "internal server error")
        elif isinstance(e, StorageFull):
            log.error("%s %s failed: the data dir's disk is full", request.method, request.rel_url.raw_path)
        error = found
    response = respond(request, error)
    if error.status in _BODY_REFUSED or error.code == "bad_request":
        response.force_close()  # "Connection: close": the client knows not to send the next request here
    return response


@web.middleware
async def refuse_unreadable_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a body speccyd would not read before reading any of it: compressed, or declared too large.

    Compressed bodies are never inflated (protocol.PROTOCOL_DEFAULTS): the apps and OpenAI's SDKs send JSON
    as is, and inflating costs CPU and memory out of all proportion to the bytes sent.
    """
    if request.body_exists:
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(
                415,
                "unsupported_content_encoding",
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed",
            )
        own_limit = getattr(request.match_info.handler, OWN_BODY_LIMIT, False)
        if not own_limit and request.content_length is not None and request.content_length > request.client_max_size:
            raise too_large(request)
    return await handler(request)


def route_label(request: web.Request) -> str:
    # The route's pattern, never the raw path: file ids and hashes would make one series per file.
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return str(resource.canonical)


def metrics_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            metrics.requests.labels(request.method, route_label(request), str(status)).inc()

    return middleware
