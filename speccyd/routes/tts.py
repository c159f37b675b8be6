from __future__ import annotations

import time

from aiohttp import web

from speccyd.auth import require_user
from speccyd.errors import ApiError
from speccyd.keys import GENERATE_LIMIT, JOBS, SETTINGS, STORE
from speccyd.routes.common import CONTENT_HASH, FILE_ID, file_json, json_body
from speccyd.tts import parse_speech_request

routes = web.RouteTableDef()


@routes.post("/tts/generate")
async def generate(request: web.Request) -> web.Response:
    """Serve cached audio for this content, join a generation in flight, or start one."""
    user_id = require_user(request)
    wait = request.app[GENERATE_LIMIT].take(user_id)
    if wait:
        raise ApiError(429, "rate_limited", f"too many requests; try again in {wait}s", {"Retry-After": str(wait)})
    settings = request.app[SETTINGS]
    speech = parse_speech_request(await json_body(request), settings.max_text_chars)

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
    return web.json_response(file_json(request, row))


@routes.delete(f"/tts/{FILE_ID}")
async def delete(request: web.Request) -> web.Response:
    user_id = require_user(request)
    if not await request.app[JOBS].delete(user_id, request.match_info["file_id"]):
        raise ApiError(404, "not_found", "no such file")
    return web.json_response({"deleted": True})
