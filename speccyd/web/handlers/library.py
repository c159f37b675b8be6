"""The user's library for every device: change-ordered sync with tombstones, and one file's metadata."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from speccyd.appkeys import FILES
from speccyd.config.units import iso
from speccyd.generation.textplan import title_of
from speccyd.storage.records import FileRow
from speccyd.web.auth import require_user
from speccyd.web.common import FILE_ID, file_json
from speccyd.web.errors import ApiError

routes = web.RouteTableDef()

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
PREVIEW_CHARS = 200  # enough for a list row on a phone; the full text stays on the server


def file_meta(request: web.Request, row: FileRow) -> dict[str, Any]:
    text = row.text
    return {
        **file_json(request, row),
        "voice": row.voice,
        "model": row.model,
        "format": row.format,
        "speed": row.speed,
        "instructions": row.instructions,
        "title": title_of(text),
        "text_preview": text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…",
        "characters": row.characters,
        "size_bytes": row.size_bytes,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "position": position_json(row),
    }


def position_json(row: FileRow) -> dict[str, Any] | None:
    """Where the user last stopped listening, from any device; null until a device says."""
    if row.position_s is None or row.position_at is None:
        return None
    return {"position_s": round(row.position_s, 3), "device": row.position_device, "updated_at": iso(row.position_at)}


def _query_int(request: web.Request, name: str, default: int, low: int, high: int, code: str) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # An empty value is not "absent": the contract (a pattern of one or more digits) refuses it too.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or not low <= int(raw) <= high:
        raise ApiError(400, code, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


@routes.get("/files")
async def library(request: web.Request) -> web.Response:
    """Files changed and removed since `since`, oldest change first; follow next_cursor while has_more."""
    user_id = require_user(request)
    since = _query_int(request, "since", 0, 0, 10**18, "invalid_cursor")
    limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, "invalid_limit")
    page = await request.app[FILES].changes_since(user_id, since, limit)
    return web.json_response(
        {
            "files": [file_meta(request, row) for _, row in page.files],
            "deleted": [
                {"file_id": t.file_id, "content_hash": t.content_hash, "reason": t.reason, "deleted_at": iso(t.at)}
                for t in page.tombstones
            ],
            "next_cursor": str(page.next_cursor),
            "has_more": page.has_more,
        }
    )


@routes.get(f"/files/{FILE_ID}/meta")
async def meta(request: web.Request) -> web.Response:
    user_id = require_user(request)
    row = await request.app[FILES].current(user_id, request.match_info["file_id"])
    return web.json_response(file_meta(request, row))
