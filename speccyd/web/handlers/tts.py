"""Asking for audio: generate (or find) it, follow its progress, delete it."""

from __future__ import annotations

from aiohttp import web

from speccyd.appkeys import CLOCK, FILES, GENERATE_LIMIT, RUNNER, SETTINGS
from speccyd.generation.errors import FileNotFound
from speccyd.generation.speech import SpeechChoices, parse_speech_request
from speccyd.security.errors import RateLimited
from speccyd.web.auth import require_user
from speccyd.web.common import CONTENT_HASH, FILE_ID, file_json, json_body

routes = web.RouteTableDef()


@routes.post("/tts/generate")
async def generate(request: web.Request) -> web.Response:
    """Serve cached audio for this content, join a generation in flight, or start one."""
    user_id = require_user(request)
    wait = request.app[GENERATE_LIMIT].take(user_id)
    if wait:
        raise RateLimited(wait)
    settings = request.app[SETTINGS]
    speech = parse_speech_request(
        await json_body(request), settings.max_text_chars, settings.upstream_max_chars, SpeechChoices.of(settings)
    )
    row = await request.app[FILES].request(user_id, speech)
    return web.json_response(file_json(request, row), status=200 if row.status == "ready" else 202)


@routes.get(f"/tts/{CONTENT_HASH}/status")
async def status(request: web.Request) -> web.Response:
    user_id = require_user(request)
    row = await request.app[FILES].by_hash(user_id, request.match_info["content_hash"])
    if row is None or row.is_expired(request.app[CLOCK].now()):
        raise FileNotFound("no audio for this content hash")
    data = file_json(request, row)
    live = request.app[RUNNER].live(row.id) if row.status == "generating" else None
    if live is not None and live.chunks_total:
        # Progress lives with the job in memory: it is only true while this process runs that job.
        data["chunks_done"] = live.chunks_done
        data["chunks_total"] = live.chunks_total
    return web.json_response(data)


@routes.delete(f"/tts/{FILE_ID}")
async def delete(request: web.Request) -> web.Response:
    user_id = require_user(request)
    await request.app[FILES].delete(user_id, request.match_info["file_id"])
    return web.json_response({"deleted": True})
