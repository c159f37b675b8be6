"""Running the app: logging, the access log, signals and a bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import signal
import sys

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from speccyd import __version__
from speccyd.app import create_app
from speccyd.settings import Settings

log = logging.getLogger("speccyd")

# Defence in depth: whatever a library logs, keys, bearer tokens and URL signatures never reach the log.
_SECRET_PATTERNS = [
    (re.compile(r"sk-[A-Za-z0-9_\-]{6,}"), "sk-[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+"), r"\1[redacted]"),
    (re.compile(r"(?i)([?&](?:sig|token)=)[^&\s]+"), r"\1[redacted]"),
]


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for pattern, replacement in _SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class AccessLogger(AbstractAccessLogger):
    """One line per request: the path without its query string, so no signature is ever logged.

    The path as sent (percent-encoded), not decoded: a decoded "%0a" or "%1b" would let anyone forge log
    lines or send escape sequences to the terminal reading the log.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %d %.1fms",
            request.remote,
            request.method,
            request.rel_url.raw_path,
            response.status,
            response.body_length,
            time * 1000,
        )


class MalformedRequestFilter(logging.Filter):
    """A malformed request is the client's fault: one info line instead of a traceback per request, so no
    one on the LAN can flood the log by sending garbage."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.exc_info = record.exc_text = None
            record.msg = "rejected a malformed request from %s: HTTP %d"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), error.code)
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def raise_open_file_limit() -> None:
    """Every connection costs a file descriptor; use all the system allows before refusing clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
        except (ValueError, OSError):
            log.debug("could not raise the open file limit from %d", soft)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The SDK's HTTP client logs request lines (with our headers at debug); keep it at warnings.
    for noisy in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())


async def _serve(settings: Settings) -> None:
    raise_open_file_limit()
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("speccyd.access"),
        shutdown_timeout=settings.shutdown_timeout,
        handle_signals=False,
        # aiohttp closes a connection that has not sent a whole request this long after it opened (or after
        # its last response): a slow-header client (slowloris) holds a socket for seconds, not an hour.
        keepalive_timeout=settings.client_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        for address in runner.addresses:
            host, port = address[0], address[1]
            log.info(
                "speccyd %s listening on http://%s:%d (data dir %s)",
                __version__,
                host,
                port,
                settings.data_dir,
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests (at most %.0fs)", settings.shutdown_timeout)
    finally:
        await runner.cleanup()
    log.info("stopped")


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))
