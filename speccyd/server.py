"""Running the app: logging, the access log, signals and a bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import signal
import socket
import ssl
import sys
from datetime import UTC, datetime

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from speccyd import __version__
from speccyd.app import apply_reload, create_app
from speccyd.appkeys import ANNOUNCER
from speccyd.config.settings import Settings, SettingsError, load_settings
from speccyd.ops.systemd import InheritedSocket, Notifier, listen_sockets, watchdog, watchdog_interval
from speccyd.security.tls import server_context
from speccyd.storage.datadir import data_dir_lock
from speccyd.web.protocol import SpeccyRunner

log = logging.getLogger("speccyd")

HEALTH_PATH = "/healthz"

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
        # A supervisor asks /healthz every few seconds (Docker: every 30 s, all day): a healthy answer is
        # logged at debug only, so the log shows requests, and a failing check still shows at info.
        level = logging.DEBUG if response.status == 200 and request.path == HEALTH_PATH else logging.INFO
        self.logger.log(
            level,
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


# After SIGTERM, a connection kept alive between requests gets this long to send one more request, which is
# answered with "Connection: close", before it is closed. Closing it at once would reset a request the client
# had already sent when the server decided to stop (the keep-alive race of RFC 9112, section 9.3.1): busy
# clients (the ones that race) send their next request within milliseconds; an idle one is closed after this.
LAME_DUCK = 0.25


class Draining:
    """Once set, every response closes its connection, so clients move to a new one (the next process)."""

    def __init__(self) -> None:
        self.active = False

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.active:
            # aiohttp computed the headers before this hook runs: say it too, or the client would reuse a
            # connection that the server closes after this response.
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"


def _announced_address(settings: Settings, inherited: list[InheritedSocket]) -> Settings:
    """With sockets from the service manager, host and port are theirs: logs, mDNS and /healthz agree."""
    for candidate in inherited:
        address = candidate.tcp_address
        if address is not None:
            if (settings.host, settings.port) != address:
                log.info(
                    "serving on the socket passed by the service manager (%s, fd %d, %s:%d); the host and port "
                    "settings do not apply",
                    candidate.name,
                    candidate.fd,
                    *address,
                )
            return settings.replace(host=address[0], port=address[1])
    return settings


def _site_url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def _serve(settings: Settings, early_signals: list[int] | None = None) -> None:
    """Serve until SIGTERM/SIGINT: start-up, sites (own or inherited sockets), sd_notify, then a bounded drain.

    `early_signals` are the signals `speccyd serve` caught before this loop existed (it installs handlers first
    thing, since a PID 1 without them ignores SIGTERM): they are acted on as soon as the loop's handlers are in.
    """
    if any(sig != signal.SIGHUP for sig in early_signals or ()):
        log.info("stop requested during start-up; exiting before serving")
        return
    inherited = listen_sockets()  # before anything else reads the environment: they are removed from it
    settings = _announced_address(settings, inherited)
    own = [] if inherited else bind_sockets(settings.host, settings.port)
    notifier = Notifier()
    ping = watchdog_interval()
    ssl_context = server_context(settings)  # before anything starts: a bad certificate is a clear error
    raise_open_file_limit()
    app = create_app(settings)
    draining = Draining()
    app.on_response_prepare.append(draining.on_response_prepare)
    # Handlers before start-up: a signal during start-up, or right after "listening" is logged, is graceful.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, settings, notifier)
    reload_after_start = False
    for early in early_signals or ():
        if early == signal.SIGHUP:
            reload_after_start = True  # the settings were read before it came: read them again once serving
        else:
            stop.set()
    watchdog_task = asyncio.create_task(watchdog(notifier, ping)) if ping is not None else None
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
    notifier.notify("STATUS=starting")
    try:
        await runner.setup()
        try:
            if stop.is_set():
                log.info("stop requested during start-up; not serving")
            else:
                await _start_sites(runner, settings, inherited, own, ssl_context)
                announcer = app.get(ANNOUNCER)
                port = _tcp_port(runner, inherited)
                if announcer is not None and port is not None:
                    announcer.start(port)  # the bound port: with --port 0 or a passed socket only now known
                notifier.ready(f"serving on {', '.join(site.name for site in runner.sites)}")
                if reload_after_start:
                    reload(app, settings, notifier)
                await stop.wait()
                notifier.stopping("finishing in-flight requests")
                if announcer is not None:
                    await announcer.stop()  # goodbyes first, so the apps stop choosing this server right away
                log.info("shutting down: finishing in-flight requests (at most %.0fs)", settings.shutdown_timeout)
                await _stop_accepting(runner, draining)
        finally:
            await runner.cleanup()
    finally:
        if watchdog_task is not None:
            watchdog_task.cancel()
        notifier.close()
    log.info("stopped")


async def _start_sites(
    runner: web.AppRunner,
    settings: Settings,
    inherited: list[InheritedSocket],
    own: list[socket.socket],
    ssl_context: ssl.SSLContext | None,
) -> None:
    # With a certificate the port speaks HTTPS only: a plain-HTTP fallback would let a downgrade through.
    scheme = "https" if ssl_context is not None else "http"
    if inherited:
        for passed in inherited:
            await web.SockSite(runner, passed.sock, ssl_context=ssl_context).start()
            address = passed.tcp_address
            where = (
                _site_url(scheme, *address) if address is not None else f"{scheme}://unix:{passed.sock.getsockname()}"
            )
            log.info(
                "speccyd %s listening on %s (data dir %s; socket %s, fd %d, from the service manager)",
                __version__,
                where,
                settings.data_dir,
                passed.name,
                passed.fd,
            )
        return
    for sock in own:
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    for address in runner.addresses:
        log.info(
            "speccyd %s listening on %s (data dir %s)",
            __version__,
            _site_url(scheme, address[0], address[1]),
            settings.data_dir,
        )


def _tcp_port(runner: web.AppRunner, inherited: list[InheritedSocket]) -> int | None:
    """The port to announce: the first TCP socket's (None when only Unix sockets were passed)."""
    if not inherited:
        return int(runner.addresses[0][1])
    return next((address[1] for passed in inherited if (address := passed.tcp_address) is not None), None)


async def _stop_accepting(runner: web.AppRunner, draining: Draining) -> None:
    """Stop accepting (an inherited socket keeps queueing for the next process), then let kept-alive
    connections leave after one more response (see LAME_DUCK); in-flight responses carry on."""
    for site in list(runner.sites):
        await site.stop()
    draining.active = True
    server = runner.server
    deadline = asyncio.get_running_loop().time() + LAME_DUCK
    # aiohttp signals nothing when a connection closes; a 10 ms poll for a quarter of a second costs nothing.
    while server is not None and server.connections and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def reload(app: web.Application, started: Settings, notifier: Notifier | None = None) -> None:
    """SIGHUP: re-read config.toml and the environment; apply log level, log format and limits.

    Listening address, data dir and the rest need a restart; open connections are never touched.
    """
    if notifier is not None:
        notifier.reloading()
    try:
        new = load_settings(started.data_dir, {"host": started.host, "port": started.port})
    except SettingsError as e:
        log.error("SIGHUP: configuration not reloaded: %s", e)
        if notifier is not None:
            notifier.ready("serving (the new configuration was refused; see the log)")
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
    if notifier is not None:
        notifier.ready("serving")


def serve(settings: Settings, early_signals: list[int] | None = None) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # The data dir's lock, held while this process serves: a second server on it, or `init --force` under
    # this one (which would leave this server on the old secrets), is refused (DataDirBusy).
    with data_dir_lock(settings.data_dir):
        asyncio.run(_serve(settings, early_signals))
