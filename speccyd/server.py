"""Running the app: logging, the access log, signals and a bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import signal
import socket
import sys
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from speccyd import __version__
from speccyd.app import apply_reload, create_app
from speccyd.appkeys import ANNOUNCER
from speccyd.config.settings import Settings, SettingsError, load_settings
from speccyd.security.tls import server_context
from speccyd.storage.datadir import data_dir_lock
from speccyd.web.protocol import SpeccyRunner

log = logging.getLogger("speccyd")

# Defence in depth: whatever a library logs, keys, bearer tokens and URL signatures never reach the log.
_SECRET_PATTERNS = [
    (re.compile(r"sk-[A-Za-z0-9_\-]{6,}"), "sk-[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+"), r"\1[redacted]"),
    (re.compile(r"(?i)([?&](?:sig|token)=)[^&\s]+"), r"\1[redacted]"),
]


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """`log_format = "json"`: one JSON object per line, for journald, Loki and friends."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class AccessLogger(AbstractAccessLogger):
    """One line per request: the path without its query string, so no signature is ever logged.

    The path as sent (percent-encoded), not decoded: a decoded "%0a" or "%1b" would let anyone forge log
    lines or send escape sequences to the terminal reading the log.
    """

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)  # spares formatting every request below info

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


def raise_open_file_limit() -> None:
    """Every connection costs a file descriptor; use all the system allows before refusing clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
        except (ValueError, OSError):
            log.debug("could not raise the open file limit from %d", soft)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The SDK's HTTP client logs request lines (with our headers at debug); keep it at warnings.
    for noisy in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for host:port (every address the host resolves to), bound before the app starts:
    a bad host or a port in use is then the one thing `serve` says, with nothing started or logged first."""
    infos = dict.fromkeys(
        (family, kind, proto, address)
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # its IPv4 twin binds on its own
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _serve(settings: Settings) -> None:
    ssl_context = server_context(settings)  # before anything starts: a bad certificate is a clear error
    sockets = bind_sockets(settings.host, settings.port)
    raise_open_file_limit()
    app = create_app(settings)
    # Handlers before start-up: a signal during start-up, or right after "listening" is logged, is graceful.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, settings)
    runner = SpeccyRunner(
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
        # With a certificate the port speaks HTTPS only: a plain-HTTP fallback would let a downgrade through.
        for sock in sockets:
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        scheme = "https" if ssl_context is not None else "http"
        for address in runner.addresses:
            host, port = address[0], address[1]
            log.info(
                "speccyd %s listening on %s://%s:%d (data dir %s)",
                __version__,
                scheme,
                host,
                port,
                settings.data_dir,
            )
        announcer = app.get(ANNOUNCER)
        if announcer is not None:
            announcer.start(runner.addresses[0][1])
        await stop.wait()
        if announcer is not None:
            await announcer.stop()  # goodbyes first, so the apps stop choosing this server right away
        log.info("shutting down: finishing in-flight requests (at most %.0fs)", settings.shutdown_timeout)
    finally:
        await runner.cleanup()
    log.info("stopped")


def reload(app: web.Application, started: Settings) -> None:
    """SIGHUP: re-read config.toml and the environment; apply log level, log format and limits.

    Listening address, data dir and the rest need a restart; open connections are never touched.
    """
    try:
        new = load_settings(started.data_dir, {"host": started.host, "port": started.port})
    except SettingsError as e:
        log.error("SIGHUP: configuration not reloaded: %s", e)
        return
    configure_logging(new.log_level, new.log_format)
    apply_reload(app, new)
    log.info(
        "SIGHUP: reloaded log_level=%s log_format=%s daily_char_quota=%d storage_quota=%d max_files=%d rate_limit=%d",
        new.log_level,
        new.log_format,
        new.daily_char_quota,
        new.storage_quota,
        new.max_files,
        new.rate_limit,
    )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # The data dir's lock, held while this process serves: a second server on it, or `init --force` under
    # this one (which would leave this server on the old secrets), is refused (DataDirBusy).
    with data_dir_lock(settings.data_dir):
        asyncio.run(_serve(settings))
