"""Small helpers shared by the handlers: reading JSON bodies and describing files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from speccyd.appkeys import SETTINGS
from speccyd.config.units import iso
from speccyd.generation.timeline import HLS_FORMATS
from speccyd.storage.records import FileRow
from speccyd.web.auth import signed_file_url, signed_playlist_url
from speccyd.web.errors import ApiError

H = TypeVar("H", bound=Callable[..., Any])
# Set on a handler that reads a body larger than the JSON limit and enforces its own (an upload of audio,
# POST /files/import, up to max_import_size): middleware.refuse_unreadable_bodies then leaves its size alone.
OWN_BODY_LIMIT = "speccyd_own_body_limit"


def own_body_limit(handler: H) -> H:
    """Mark a handler that reads a larger body than JSON requests may send and enforces its own limit."""
    setattr(handler, OWN_BODY_LIMIT, True)
    return handler


FILE_ID = r"{file_id:[0-9a-f]{32}}"
CONTENT_HASH = r"{content_hash:[0-9a-f]{64}}"


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; 413 past client_max_size, 400 for anything that is not an object."""
    timeout = request.app[SETTINGS].client_timeout
    try:
        # A body trickled in a byte at a time would otherwise hold its connection and handler forever.
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"request body not received within {timeout:g}s") from None
    try:
        body = json.loads(raw)
    except ValueError:  # bad JSON, bad UTF-8, or an integer past Python's 4,300-digit limit
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return body


def file_json(request: web.Request, row: FileRow) -> dict[str, Any]:
    data: dict[str, Any] = {
        "file_id": row.id,
        "content_hash": row.content_hash,
        "status": row.status,
        "url": signed_file_url(request, row.id, row.user_id, row.expires_at),
        # HLS for the apps' one code path (AVPlayer); null for formats HLS cannot carry (wav, pcm, flac, opus).
        "playlist_url": signed_playlist_url(request, row.id, row.user_id, row.expires_at)
        if row.format in HLS_FORMATS
        else None,
        "expires_at": iso(row.expires_at),
        "duration_s": round(row.duration_s, 3) if row.status == "ready" and row.duration_s is not None else None,
    }
    if row.error:
        data["error"] = row.error
        data["error_code"] = row.error_code
    return data
