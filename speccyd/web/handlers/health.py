"""GET /healthz: checks that mean something to a supervisor, each named when it fails."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from aiohttp import web

from speccyd import __version__
from speccyd.appkeys import CLOCK, DATABASE, SETTINGS, STARTED_AT
from speccyd.config.text import describe
from speccyd.config.units import format_duration, format_size, iso
from speccyd.generation.cleanup import LAST_CLEANUP

routes = web.RouteTableDef()

# A supervisor's probe should get an answer, not hang for the 5 s busy_timeout behind a stuck writer.
DB_TIMEOUT = 2.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 when the database takes writes, the disk has room and cleanup is running; 503 naming what is not."""
    app = request.app
    settings, db = app[SETTINGS], app[DATABASE]
    now = app[CLOCK].now()
    checks: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    try:
        await asyncio.wait_for(db.probe_write(now), DB_TIMEOUT)
        checks["database"] = {"ok": True}
    except TimeoutError:
        checks["database"] = {"ok": False}
        problems.append(f"database: a write did not finish within {DB_TIMEOUT:g}s (locked or stalled)")
    except Exception as e:
        checks["database"] = {"ok": False}
        problems.append(f"database: cannot write ({describe(e)})")

    try:
        free = shutil.disk_usage(settings.data_dir).free
    except OSError:  # the data dir itself is gone or unreadable: as bad as a full disk
        free = 0
    disk_ok = free >= settings.min_free_disk
    checks["disk"] = {"ok": disk_ok, "free_bytes": free, "min_free_bytes": settings.min_free_disk}
    if not disk_ok:
        problems.append(
            f"disk: {format_size(free)} free in {settings.data_dir}, below min_free_disk "
            f"{format_size(settings.min_free_disk)}"
        )

    # Cleanup runs at start-up and every cleanup_interval; missing two runs means the loop is stuck.
    max_age = 2 * settings.cleanup_interval
    if not checks["database"]["ok"]:
        # Its record is in the database, behind the stuck or failing write: "unknown", not a second failure.
        checks["cleanup"] = {"ok": None, "last_run": None, "max_age_seconds": max_age}
    else:
        last_raw = await db.get_meta(LAST_CLEANUP)
        last = float(last_raw) if last_raw else None
        since = now - (last if last is not None else app[STARTED_AT])
        cleanup_ok = since <= max_age
        checks["cleanup"] = {"ok": cleanup_ok, "last_run": iso(last), "max_age_seconds": max_age}
        if not cleanup_ok:
            ran = f"last ran {format_duration(round(since))} ago" if last is not None else "has not run yet"
            problems.append(f"cleanup: {ran}, more than 2 x cleanup_interval ({format_duration(max_age)})")

    body: dict[str, Any] = {"status": "ok" if not problems else "unhealthy", "version": __version__, "checks": checks}
    if problems:
        failing = [name for name, check in checks.items() if check["ok"] is False]
        body["failing"] = failing
        body["error"] = {"code": "unhealthy", "message": "; ".join(problems)}
        return web.json_response(body, status=503)
    return web.json_response(body)
