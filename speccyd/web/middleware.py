"""The two middlewares: every failure becomes a JSON error; every request is counted (when metrics are on)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from speccyd.ops.metrics import Metrics
from speccyd.storage.errors import StorageFull
from speccyd.web.errors import HTTP_CODES, ApiError, Handler, api_error, respond

log = logging.getLogger(__name__)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = HTTP_CODES.get(e.status, "http_error")
        message = e.reason if e.status != 413 else "request body is larger than 1 MiB"
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After", "Content-Range")}
        return respond(request, ApiError(e.status, code, message, headers))
    except Exception as e:
        error = api_error(e)
        if error is None:
            # The traceback goes to the log only; the client learns nothing about internals.
            log.exception("unhandled error in %s %s", request.method, request.rel_url.raw_path)
            error = ApiError(500, "internal_error", "internal server error")
        elif isinstance(e, StorageFull):
            log.error("%s %s failed: the data dir's disk is full", request.method, request.rel_url.raw_path)
        return respond(request, error)


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
