"""The application factory: every resource is one cleanup context, started in dependency order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from speccyd.blobs import Blobs
from speccyd.cleanup import cleanup_loop
from speccyd.crypto import ServerSecrets
from speccyd.datadir import init_data_dir
from speccyd.discovery import Announcer
from speccyd.errors import error_middleware
from speccyd.keys import (
    ANNOUNCER,
    AUTH_FAILURE_LIMIT,
    BLOBS,
    GENERATE_LIMIT,
    JOBS,
    SECRETS,
    SESSIONS,
    SETTINGS,
    STORE,
    UPSTREAM,
)
from speccyd.ratelimit import RateLimiter
from speccyd.routes import setup_routes
from speccyd.sessions import Sessions
from speccyd.settings import Settings
from speccyd.store import Store
from speccyd.synth import JobManager
from speccyd.upstream import Upstream

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # 1 MiB: a 100,000-character text is at most ~400 KB of JSON


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    init_data_dir(settings)  # a no-op on an initialised data dir; creates everything on the first run
    app[SECRETS] = ServerSecrets.load(settings.secrets_dir)
    app[SESSIONS] = Sessions(app[SECRETS])
    store = Store(settings.db_path)
    app[STORE] = store
    blobs = Blobs(settings.audio_dir)
    app[BLOBS] = blobs
    # Files without a ready row are leftovers of a crash (or of a purge racing a generation).
    await store.run(lambda: blobs.sweep(store.ready_ids()))
    yield
    store.close()


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    upstream = Upstream(app[SETTINGS].openai_base_url, app[SETTINGS].upstream_timeout)
    app[UPSTREAM] = upstream
    yield
    await upstream.close()


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    jobs = JobManager(app[SETTINGS], store, app[BLOBS], app[UPSTREAM], app[SECRETS])
    app[JOBS] = jobs
    interrupted = await store.run(store.generating)
    for row in interrupted:
        jobs.start(row)
    if interrupted:
        log.info("resumed %d generations interrupted by the last shutdown", len(interrupted))
    flusher = asyncio.create_task(jobs.flush_hits_forever())
    yield
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    await jobs.close()
    await jobs.flush_hits()


async def cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(cleanup_loop(app[JOBS], app[STORE], app[BLOBS], app[SETTINGS].cleanup_interval))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def mdns_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the mDNS sockets; the server announces once its port is bound (`Announcer.start`)."""
    settings = app[SETTINGS]
    if not settings.mdns:
        yield
        return
    from speccyd.tls import fingerprint

    store = app[STORE]
    server_id = await store.run(store.server_id)
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


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[GENERATE_LIMIT] = RateLimiter(settings.rate_limit)
    app[AUTH_FAILURE_LIMIT] = RateLimiter(settings.auth_rate_limit)
    app.cleanup_ctx.extend([storage_ctx, upstream_ctx, jobs_ctx, cleanup_ctx, mdns_ctx])
    setup_routes(app)
    return app
