"""Below the app: how aiohttp's own HTTP protocol answers what never reaches a handler, and what it may do.

aiohttp answers a request its parser refuses (a request line or header over its limits, bad framing, a bad
method) from `RequestHandler.handle_error`, before any middleware runs, as `text/plain`. That method is the one
place every such answer is made, so speccyd's handler subclass makes it there, in the JSON envelope, and a
runner subclass puts that handler under the app (the production server, the metrics listener and the tests'
servers all use `SpeccyRunner`).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from speccyd.web.errors import HTTP_CODES, ApiError, respond

log = logging.getLogger("aiohttp.server")

# A parser's message quotes what it refused; enough of it to tell the client, never a whole 8 KiB line.
_MAX_DETAIL = 200

# What the protocol is told to do (RequestHandler arguments), whoever builds the runner.
PROTOCOL_DEFAULTS: dict[str, Any] = {
    # Bodies are taken as sent: no gzip, deflate or br is ever inflated (a 1 MiB deflate body can inflate to
    # 1 GiB of CPU and memory); a compressed body gets a 415 (middleware.refuse_unreadable_bodies).
    "auto_decompress": False,
    # After answering a request whose body was not read (refused: too large, compressed, too slow), close the
    # connection instead of reading and discarding the rest for aiohttp's default 10 s.
    "lingering_time": 0,
}


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's protocol handler, answering its own refusals in speccyd's JSON envelope."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            # The client's fault: one line, never a traceback per request, so nobody can flood the log.
            log.info("rejected a malformed request from %s: HTTP %d (%s)", request.remote, status, _detail(exc))
            code = HTTP_CODES.get(status, "bad_request")
            text = f"malformed HTTP request: {_detail(exc)}"
        elif status == 504:
            code, text = "timeout", "the request took too long"
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "internal server error"
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already being sent; the connection is cut instead")
        response = respond(request, ApiError(status, code, text))
        response.force_close()
        return response


def _detail(exc: HttpProcessingError) -> str:
    detail = " ".join(str(exc.message).split()) or type(exc).__name__
    return detail if len(detail) <= _MAX_DETAIL else detail[: _MAX_DETAIL - 1] + "…"


class JsonErrorServer(web.Server):
    """aiohttp's low-level server (the protocol factory), building `JsonErrorRequestHandler`s."""

    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class SpeccyRunner(web.AppRunner):
    """An AppRunner whose connections use `JsonErrorRequestHandler` and `PROTOCOL_DEFAULTS`."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**PROTOCOL_DEFAULTS, **kwargs})

    async def _make_server(self) -> web.Server:
        # The app builds its Server (start-up, its request factory and handler, the runner's arguments); the
        # same Server, as our subclass.
        server = await super()._make_server()
        return JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
