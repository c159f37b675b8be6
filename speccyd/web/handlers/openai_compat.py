"""OpenAI's speech API under /v1, answered through speccyd's cache, so OpenAI SDKs and tools work unchanged.

Errors here use OpenAI's envelope (see errors.OPENAI_PREFIX), so the SDKs raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from speccyd.appkeys import BLOBS, DATABASE, FILES, GENERATE_LIMIT, METRICS, RUNNER, SETTINGS
from speccyd.generation.errors import FileNotFound, InvalidRequest
from speccyd.generation.speech import SpeechChoices, parse_speech_request
from speccyd.media.formats import CONTENT_TYPES
from speccyd.security.errors import RateLimited
from speccyd.storage.records import FileRow
from speccyd.web.auth import require_user_or_key
from speccyd.web.common import json_body
from speccyd.web.errors import ApiError
from speccyd.web.streaming import audio_response, stream_live, whole_file_request

routes = web.RouteTableDef()

# speccyd's request fields -> OpenAI's names for them.
_OPENAI_PARAM = {"text": "input", "format": "response_format"}
_REQUIRED = ("model", "input", "voice")
# Polling a local row is cheap; the interval grows so a long generation costs a few queries a second.
_POLL_FIRST, _POLL_MAX = 0.02, 0.25


def _speccy_body(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's request body in speccyd's field names; nulls mean "not given", as in OpenAI's SDKs."""
    for name in _REQUIRED:
        if body.get(name) is None:
            raise ApiError(400, "missing_required_parameter", f"you must provide '{name}'", param=name)
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio"):
        raise ApiError(400, "invalid_value", "stream_format must be 'audio'", param="stream_format")
    ours = {
        "text": body["input"],
        "model": body["model"],
        "voice": body["voice"],
        "format": body.get("response_format"),
        "speed": body.get("speed"),
        "instructions": body.get("instructions"),
    }
    return {k: v for k, v in ours.items() if v is not None}


async def _wait_ready(request: web.Request, row: FileRow) -> FileRow:
    """The row once generation has finished, within `speech_wait`."""
    db = request.app[DATABASE]
    deadline = time.monotonic() + request.app[SETTINGS].speech_wait
    delay = _POLL_FIRST
    current: FileRow | None = row
    while current is not None and current.status == "generating":
        if time.monotonic() >= deadline:
            raise ApiError(504, "timeout", "the audio is still being generated; try again to collect it")
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX)
        current = await db.get_file(row.id)
    if current is None:
        raise ApiError(409, "cancelled", "the audio was deleted while it was being generated")
    if current.status == "failed":
        raise _failure(current)
    return current


# Upstream refusals that no retry can change: answered with the upstream's own status, so OpenAI SDKs raise
# the same error class as with OpenAI itself and do not retry. A 502 here made an SDK (max_retries=2 by
# default) repeat the request twice, and each repeat generated again: three upstream calls for one refusal.
_PASSED_THROUGH = {400: "invalid_request_error", 401: "invalid_api_key", 403: "permission_denied",
                   404: "not_found", 429: "rate_limit_exceeded"}  # fmt: skip


def _failure(row: FileRow) -> ApiError:
    """The error an OpenAI client gets for a failed generation, from the failure stored with its row."""
    message = f"generation failed: {row.error}"
    if row.error_code == "storage_full":
        return ApiError(507, "storage_full", message)
    if row.error_code == "upstream_timeout":
        return ApiError(504, "upstream_timeout", message)
    status = row.upstream_status
    if row.error_code in ("upstream_refused", "upstream_failed") and status in _PASSED_THROUGH:
        return ApiError(status, _PASSED_THROUGH[status], message)
    return ApiError(502, "upstream_error", message)


@routes.post("/v1/audio/speech")
async def speech(request: web.Request) -> web.StreamResponse:
    """Audio bytes for an OpenAI speech request: from disk when cached, else generated once."""
    user_id = await require_user_or_key(request)
    wait = request.app[GENERATE_LIMIT].take(user_id)
    if wait:
        raise RateLimited(wait)
    whole = whole_file_request(request)  # before the body is read: the audio answer ignores Range
    body = await json_body(request)
    settings = request.app[SETTINGS]
    try:
        speech = parse_speech_request(
            _speccy_body(body), settings.max_text_chars, settings.upstream_max_chars, SpeechChoices.of(settings)
        )
    except InvalidRequest as e:
        # The message and the field in OpenAI's names, which these clients know.
        param = _OPENAI_PARAM.get(e.param, e.param)
        message = str(e)
        if message.startswith(f"{e.param} "):
            message = param + message[len(e.param) :]
        raise InvalidRequest(e.code, message, param) from None

    row = await request.app[FILES].request(user_id, speech)
    live = request.app[RUNNER].live(row.id) if row.status == "generating" else None
    if live is not None:
        # Stream as OpenAI does, but only once audio flows: a generation refused before its first byte
        # still reaches the SDK as a clean error status instead of a cut 200.
        try:
            await asyncio.wait_for(live.started(), request.app[SETTINGS].speech_wait)
        except TimeoutError:
            raise ApiError(504, "timeout", "the audio is still being generated; try again to collect it") from None
        # A joined WAV or a chaptered mp3 rewrites its first bytes at the end: those wait for the whole file.
        header_final = live.timeline is None or live.timeline.header_final
        if live.state == "generating" and live.length > 0 and header_final:
            return await stream_live(request, live, row, {"X-Speccy-File-Id": row.id})
    row = await _wait_ready(request, row)
    try:
        return await audio_response(
            whole,
            request.app[METRICS],
            request.app[BLOBS].local_path(row.id, row.format),
            {"Content-Type": CONTENT_TYPES[row.format], "X-Speccy-File-Id": row.id},
            conditional=False,  # the answer of a POST: Range and conditional headers do not apply
        )
    except FileNotFound:  # purged between the status check and now
        raise ApiError(409, "cancelled", "the audio was deleted while it was being sent") from None


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "speccyd"}


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    """The text-to-speech models speccyd accepts (the `models` setting: no upstream call, no sign-in)."""
    models = request.app[SETTINGS].models
    return web.json_response({"object": "list", "data": [_model(m) for m in models]})


@routes.get("/v1/models/{model}")
async def model(request: web.Request) -> web.Response:
    """One model, a dated snapshot of a listed one included."""
    model_id = request.match_info["model"]
    if SpeechChoices.of(request.app[SETTINGS]).base_model(model_id) is None:
        raise ApiError(404, "model_not_found", f"the model '{model_id}' does not exist", param="model")
    return web.json_response(_model(model_id))


@routes.get("/v1/audio/voices")
async def voices(request: web.Request) -> web.Response:
    """The voices speech requests may name (the `voices` setting)."""
    voices = request.app[SETTINGS].voices
    return web.json_response({"object": "list", "data": [{"id": v, "name": v.capitalize()} for v in voices]})
