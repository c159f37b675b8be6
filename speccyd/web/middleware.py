"""The two middlewares: every failure becomes a JSON error; every request is counted (when metrics are on)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from speccyd.ops.metrics import Metrics
from speccyd.web.errors import HTTP_CODES, STORAGE_FULL_MESSAGE, ApiError, Handler, StorageFull, respond

log = logging.getLogger(__name__)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return respond(request, e.status, e.code, e.message, e.headers, e.param)
    except StorageFull:
        log.error("%s %s failed: the data dir's disk is full", request.method, request.rel_url.raw_path)
        return respond(request, 507, "storage_full", STORAGE_FULL_MESSAGE)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = HTTP_CODES.get(e.status, "http_error")
        message = e.reason if e.status != 413 else "request body is larger than 1 MiB"
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After", "Content-Range")}
        return respond(request, e.status, code, message, headers)
    except Exception:
        # The traceback goes to the log only; the client learns nothing about internals.
        log.exception("unhandled error in %s %s", request.method, request.rel_url.raw_path)
        return respond(request, 500, "internal_error", "internal server error")


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
