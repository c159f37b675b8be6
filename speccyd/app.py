"""The application factory: every resource is one cleanup context, started in dependency order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from speccyd.appkeys import (
    ANNOUNCER,
    AUTH_FAILURE_LIMIT,
    BLOBS,
    CLOCK,
    DATABASE,
    FILES,
    GENERATE_LIMIT,
    KEY_CACHE,
    METRICS,
    QUOTAS,
    REVOCATIONS,
    RUNNER,
    SECRETS,
    SESSIONS,
    SETTINGS,
    SIGN_IN,
    STARTED_AT,
    UPSTREAM,
)
from speccyd.config.clock import SYSTEM_CLOCK, Clock
from speccyd.config.settings import Settings, split_listen
from speccyd.generation.files import FileService
from speccyd.generation.quotas import Quotas, limits_from
from speccyd.generation.readycache import ReadyCache
from speccyd.generation.runner import JobRunner
from speccyd.generation.speech import max_body_bytes
from speccyd.generation.upstream import Upstream
from speccyd.ops.discovery import Announcer
from speccyd.ops.metrics import Metrics
from speccyd.security.crypto import ServerSecrets
from speccyd.security.keycache import KeyCache
from speccyd.security.provision import init_data_dir
from speccyd.security.ratelimit import RateLimiter
from speccyd.security.revocations import Revocations, refresh_loop
from speccyd.security.sessions import Sessions
from speccyd.security.signin import SignIn
from speccyd.storage.blobs import open_blobs
from speccyd.storage.database import open_database
from speccyd.storage.sqlite import quarantine, quick_check
from speccyd.web.handlers.metrics import metrics_app
from speccyd.web.handlers.metrics import routes as metrics_routes
from speccyd.web.middleware import error_middleware, metrics_middleware, refuse_unreadable_bodies
from speccyd.web.protocol import SpeccyRunner
from speccyd.web.routes import setup_routes

log = logging.getLogger(__name__)


def set_aside_corrupt_database(settings: Settings) -> bool:
    """Move a database that fails PRAGMA quick_check (and its audio) aside, so the server starts fresh
    instead of crash-looping; the owner can still try `sqlite3 <file> .recover` on the copy."""
    problem = quick_check(settings.db_path)
    if problem is None:
        return False
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = quarantine(settings.db_path, stamp)
    audio_moved = settings.audio_dir.with_name(f"{settings.audio_dir.name}.corrupt-{stamp}")
    if settings.audio_dir.exists():
        os.replace(settings.audio_dir, audio_moved)
    log.error(
        "DATABASE CORRUPT: %s failed PRAGMA quick_check (%s); moved it to %s and its audio to %s; "
        "starting with an empty database (every device must sign in again)",
        settings.db_path,
        problem,
        moved,
        audio_moved,
    )
    return True


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` while the app serves; cancel it and wait for it at cleanup."""
    task = asyncio.create_task(work)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, clock = app[SETTINGS], app[CLOCK]
    app[STARTED_AT] = clock.now()
    fresh = set_aside_corrupt_database(settings)
    await init_data_dir(settings)  # a no-op on an initialised data dir; creates everything on the first run
    app[SECRETS] = ServerSecrets.load(settings.secrets_dir)
    app[SESSIONS] = Sessions(app[SECRETS], app[REVOCATIONS], clock)
    db = open_database(settings)
    app[DATABASE] = db
    if fresh:  # sessions name users the new database does not have: end them all
        await db.revoke_all_sessions(clock.now())
    blobs = open_blobs(settings)
    app[BLOBS] = blobs
    # Files without a ready row are leftovers of a crash (or of a purge racing a generation).
    await blobs.sweep(await db.ready_ids())
    yield
    await db.close()


async def revocations_ctx(app: web.Application) -> AsyncIterator[None]:
    db, revocations = app[DATABASE], app[REVOCATIONS]
    revocations.load(await db.revocations())  # before the first request, not a second later
    async with background(refresh_loop(db, revocations)):
        yield


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstream = Upstream(settings.openai_base_url, settings.upstream_timeout)
    app[UPSTREAM] = upstream
    app[SIGN_IN] = SignIn(
        app[DATABASE],
        app[SECRETS],
        upstream.check_key,
        app[AUTH_FAILURE_LIMIT],
        app[KEY_CACHE],
        app[CLOCK],
    )
    yield
    await upstream.close()


async def files_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, db, blobs, clock = app[SETTINGS], app[DATABASE], app[BLOBS], app[CLOCK]
    ready = ReadyCache()
    runner = JobRunner(settings, db, blobs, app[UPSTREAM], app[SECRETS], app[METRICS], clock, on_ready=ready.put)
    files = FileService(settings, db, blobs, runner, ready, app[QUOTAS], app[METRICS], clock)
    app[RUNNER], app[FILES] = runner, files
    interrupted = await db.generating()
    for row in interrupted:
        runner.start(row)
    if interrupted:
        log.info("resumed %d generations interrupted by the last shutdown", len(interrupted))
    async with background(files.flush_hits_forever()), background(_backfill(files)):
        yield
    await runner.close()
    await files.flush_hits()


async def _backfill(files: FileService) -> None:
    counted = await files.backfill_timelines()
    if counted:
        log.info("counted the timelines of %d files made before speccyd kept them", counted)


async def cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
    async with background(app[FILES].expire_forever(app[SETTINGS].cleanup_interval)):
        yield


async def end_live_streams(app: web.Application) -> None:
    # on_shutdown runs before the server waits for in-flight requests; a reader following a job that has
    # minutes left would otherwise hold the whole shutdown_timeout. Its client sees a cut stream and retries.
    if RUNNER in app:
        app[RUNNER].end_streams()


async def metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """/metrics on its own address (`metrics_listen`), so it need not be reachable from the LAN."""
    listen = app[SETTINGS].metrics_listen
    if not listen:
        yield
        return
    host, port = split_listen(listen)
    runner = SpeccyRunner(metrics_app(app), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        for address in runner.addresses:
            log.info("metrics on http://%s:%d/metrics", address[0], address[1])
        yield
    finally:
        await runner.cleanup()


def apply_reload(app: web.Application, settings: Settings) -> None:
    """SIGHUP: take the new limits; connections, jobs and everything else carry on untouched."""
    app[QUOTAS].defaults = limits_from(settings)
    app[GENERATE_LIMIT].reconfigure(settings.rate_limit)
    app[AUTH_FAILURE_LIMIT].reconfigure(settings.auth_rate_limit)


async def mdns_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the mDNS sockets; the server announces once its port is bound (`Announcer.start`)."""
    settings = app[SETTINGS]
    if not settings.mdns:
        yield
        return
    from speccyd.security.tls import fingerprint

    server_id = await app[DATABASE].server_id()
    tls_fingerprint = fingerprint(settings.tls_cert) if settings.tls_cert is not None else None
    try:
        announcer = Announcer(settings, server_id, tls_fingerprint)
    except OSError as e:
        # A NAS without multicast still serves; the apps can be pointed at its address by hand.
        log.error("mDNS is unavailable (%s); the apps will not find this server by themselves", e)
        yield
        return
    app[ANNOUNCER] = announcer
    yield
    await announcer.close()


def create_app(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    metrics = Metrics()
    # Counting every request costs a few microseconds on the hottest paths; only when someone can read it.
    middlewares = [metrics_middleware(metrics)] if settings.metrics or settings.metrics_listen else []
    app = web.Application(
        client_max_size=max_body_bytes(settings.max_text_chars),
        middlewares=[*middlewares, error_middleware, refuse_unreadable_bodies],
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[METRICS] = metrics
    app[QUOTAS] = Quotas(limits_from(settings))
    app[REVOCATIONS] = Revocations()
    app[GENERATE_LIMIT] = RateLimiter(settings.rate_limit, clock)
    app[AUTH_FAILURE_LIMIT] = RateLimiter(settings.auth_rate_limit, clock)
    app[KEY_CACHE] = KeyCache(settings.key_cache_ttl, clock=clock)
    app.cleanup_ctx.extend(
        [storage_ctx, revocations_ctx, upstream_ctx, files_ctx, cleanup_ctx, metrics_listener_ctx, mdns_ctx]
    )
    app.on_shutdown.append(end_live_streams)
    setup_routes(app)
    if settings.metrics:  # off by default: metrics tell who uses the server and how much
        app.add_routes(metrics_routes)
    return app
