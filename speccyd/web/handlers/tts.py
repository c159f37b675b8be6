from __future__ import annotations

import time

from aiohttp import web

from speccyd.appkeys import GENERATE_LIMIT, JOBS, SETTINGS, STORE
from speccyd.generation.speech import parse_speech_request
from speccyd.web.auth import require_user
from speccyd.web.common import CONTENT_HASH, FILE_ID, file_json, json_body
from speccyd.web.errors import ApiError

routes = web.RouteTableDef()


@routes.post("/tts/generate")
async def generate(request: web.Request) -> web.Response:
    """Serve cached audio for this content, join a generation in flight, or start one."""
    user_id = require_user(request)
    wait = request.app[GENERATE_LIMIT].take(user_id)
    if wait:
        raise ApiError(429, "rate_limited", f"too many requests; try again in {wait}s", {"Retry-After": str(wait)})
    settings = request.app[SETTINGS]
    speech = parse_speech_request(await json_body(request), settings.max_text_chars, settings.upstream_max_chars)

    row = await request.app[JOBS].request(user_id, speech)
    status = 200 if row.status == "ready" else 202
    return web.json_response(file_json(request, row), status=status)


@routes.get(f"/tts/{CONTENT_HASH}/status")
async def status(request: web.Request) -> web.Response:
    user_id = require_user(request)
    store = request.app[STORE]
    row = await store.run(store.get_by_hash, user_id, request.match_info["content_hash"])
    if row is None or row.is_expired(time.time()):
        raise ApiError(404, "not_found", "no audio for this content hash")
    data = file_json(request, row)
    live = request.app[JOBS].live(row.id) if row.status == "generating" else None
    if live is not None and live.chunks_total:
        # Progress lives with the job in memory: it is only true while this process runs that job.
        data["chunks_done"] = live.chunks_done
        data["chunks_total"] = live.chunks_total
    return web.json_response(data)


@routes.delete(f"/tts/{FILE_ID}")
async def delete(request: web.Request) -> web.Response:
    user_id = require_user(request)
    if not await request.app[JOBS].delete(user_id, request.match_info["file_id"]):
        raise ApiError(404, "not_found", "no such file")
    return web.json_response({"deleted": True})
