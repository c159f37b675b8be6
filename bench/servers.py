"""The two servers under test, each run in its own process by `python -m bench.core --role ...`.

Each prints one JSON line with its ports on stdout, then serves until its stdin closes (the bench holds
the other end, so a crashed bench never leaves a server behind) or it gets SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from speccyd.app import create_app
from speccyd.appkeys import BLOBS, DATABASE, SECRETS
from speccyd.config.settings import Settings, load_settings
from speccyd.generation.cleanup import expire
from speccyd.server import AccessLogger, configure_logging
from speccyd.storage.records import NewFile
from speccyd.storage.sqlite import SqliteDatabase
from speccyd.web.protocol import SpeccyRunner

HOST = "127.0.0.1"  # loopback only, always


def bench_settings(data_dir: Path, upstream_url: str) -> Settings:
    """Production settings but on loopback: no mDNS, no rate limit, and no access-log lines at warning."""
    overrides = {
        "host": HOST,
        "port": "0",
        "openai_base_url": upstream_url,
        "mdns": "off",
        "rate_limit": "off",
        "log_level": "warning",
    }
    return load_settings(data_dir, overrides, env={})  # env={}: the caller's SPECCY_* never leak in


async def _serve_until_stopped(runners: list[web.AppRunner], ports: dict[str, int]) -> None:
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def _start(
    app: web.Application, runner_class: type[web.AppRunner] = web.AppRunner, **runner_options: Any
) -> tuple[web.AppRunner, int]:
    runner = runner_class(app, handle_signals=False, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


# --- speccyd, plus a control app for what only an in-process hook can measure ---


async def _seed_expired(app: web.Application, count: int) -> None:
    """`count` ready rows that expired an hour ago, each with a 16 KiB file, made with the database's methods.

    The files are written plainly rather than through a blob writer, whose two fsyncs per file would make
    seeding 5,000 rows take far longer than the cleanup being measured.
    """
    db, blobs, secrets = app[DATABASE], app[BLOBS], app[SECRETS]
    past = time.time() - 3600
    key = "sk-test-bench-expired"
    user_id = await db.upsert_user(secrets.key_lookup_hash(key), lambda uid: secrets.encrypt_key(key, uid), past)
    audio = b"\0" * 16384
    for i in range(count):
        text = f"expired row {i} {past}"
        new = NewFile(hashlib.sha256(text.encode()).hexdigest(), "tts-1", "alloy", "mp3", 1.0, None, text)
        row = (await db.claim(user_id, new, past, 60.0)).row
        path = blobs.local_path(row.id, row.format)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(audio)
        await db.mark_ready(row.id, len(audio), hashlib.sha256(audio).hexdigest(), past, 60.0)


def _expire_on_the_loop(app: web.Application) -> int:
    """The same deletes as a cleanup pass, run on the event loop's own thread: what a blocking query costs."""
    db, blobs = app[DATABASE], app[BLOBS]
    assert isinstance(db, SqliteDatabase)
    rows = db.connection.execute(
        "DELETE FROM audio_files WHERE status != 'generating' AND expires_at <= ? RETURNING id, format", (time.time(),)
    ).fetchall()
    for file_id, fmt in rows:
        blobs.local_path(file_id, fmt).unlink(missing_ok=True)
    return len(rows)


async def _heartbeat(stop: asyncio.Event, lags: list[float], interval: float = 0.001) -> None:
    """How late the loop wakes a 1 ms sleeper: any callback that blocks the loop shows up here."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(interval)
        lags.append(time.perf_counter() - before - interval)


def control_app(speccyd: web.Application) -> web.Application:
    """Bench-only endpoints on their own port; the speccyd app itself is exactly what production runs."""
    routes = web.RouteTableDef()

    @routes.post("/seed")
    async def seed(request: web.Request) -> web.Response:
        count = int(request.query["count"])
        start = time.perf_counter()
        await _seed_expired(speccyd, count)
        return web.json_response({"seeded": count, "seconds": time.perf_counter() - start})

    @routes.post("/lag")
    async def lag(request: web.Request) -> web.Response:
        """Event-loop lag while one cleanup pass runs: on the store thread (as speccyd does), on the loop
        (what a blocking query would cost), or with nothing running (the floor)."""
        mode = request.query["mode"]
        db, blobs = speccyd[DATABASE], speccyd[BLOBS]
        lags: list[float] = []
        stop = asyncio.Event()
        beat = asyncio.create_task(_heartbeat(stop, lags))
        await asyncio.sleep(0.05)  # the heartbeat is running before the work starts
        start = time.perf_counter()
        removed = 0
        if mode == "thread":
            removed = len(await expire(db, blobs, time.time()))
        elif mode == "loop":
            removed = _expire_on_the_loop(speccyd)  # deliberately blocking: the reference for "what if"
        elif mode == "idle":
            await asyncio.sleep(0.5)
        else:
            raise web.HTTPBadRequest(text="mode is thread, loop or idle")
        seconds = time.perf_counter() - start
        await asyncio.sleep(0.05)
        stop.set()
        await beat
        ordered = sorted(lags)
        return web.json_response(
            {
                "mode": mode,
                "removed": removed,
                "seconds": seconds,
                "beats": len(lags),
                "max_lag_ms": ordered[-1] * 1000,
                "p99_lag_ms": ordered[int(len(ordered) * 0.99)] * 1000,
            }
        )

    @routes.post("/log-level")
    async def log_level(request: web.Request) -> web.Response:
        # speccyd's AccessLogger asks the logger at every request, so this switches the access log live.
        logging.getLogger().setLevel(request.query["level"].upper())
        return web.json_response({"level": request.query["level"]})

    app = web.Application()
    app.add_routes(routes)
    return app


async def serve_speccyd(data_dir: Path, upstream_url: str) -> None:
    """speccyd as `speccyd serve` runs it (speccyd.server._serve: same runner, options and access logger),
    on port 0 so the bench learns the port from stdout rather than guessing a free one."""
    settings = bench_settings(data_dir, upstream_url)
    configure_logging(settings.log_level)
    app = create_app(settings)
    runner, port = await _start(
        app,
        SpeccyRunner,  # the protocol speccyd serve runs: its refusals in JSON, no lingering, no inflating
        access_log_class=AccessLogger,
        access_log=logging.getLogger("speccyd.access"),
        shutdown_timeout=settings.shutdown_timeout,
    )
    control, control_port = await _start(control_app(app), access_log=None)
    await _serve_until_stopped([runner, control], {"port": port, "control": control_port})


# --- the reference: the least aiohttp code that answers the same requests ---


async def serve_reference(file: Path, answer: dict[str, Any], speech_file: Path) -> None:
    """GET /file: the same 1 MB file; POST /json: parse the body, answer speccyd's cache-hit JSON verbatim;
    POST /answer: the same answer without parsing the body (the floor); POST /speech: parse the body, send the
    small file a /v1 cache hit sends."""

    async def download(request: web.Request) -> web.FileResponse:
        return web.FileResponse(file)

    async def generate(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response(answer)

    async def unparsed(request: web.Request) -> web.Response:
        return web.json_response(answer)

    async def speech(request: web.Request) -> web.FileResponse:
        await request.json()
        return web.FileResponse(speech_file, headers={"Content-Type": "audio/mpeg"})

    app = web.Application()
    app.router.add_get("/file", download)
    app.router.add_post("/json", generate)
    app.router.add_post("/answer", unparsed)
    app.router.add_post("/speech", speech)
    runner, port = await _start(app)  # aiohttp's default access log, silent at the default WARNING level
    await _serve_until_stopped([runner], {"port": port})
