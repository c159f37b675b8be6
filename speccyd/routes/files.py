from __future__ import annotations

import time

from aiohttp import web

from speccyd.auth import require_user
from speccyd.errors import ApiError
from speccyd.keys import BLOBS, SECRETS, STORE
from speccyd.routes.common import FILE_ID
from speccyd.store import FileRow
from speccyd.tts import CONTENT_TYPES

routes = web.RouteTableDef()


async def _authorized_row(request: web.Request, file_id: str) -> FileRow:
    """The file if the request may read it: by session token, or by the signature in a file URL."""
    store = request.app[STORE]
    sig = request.query.get("sig")
    if sig is None:
        user_id = require_user(request)
        row = await store.run(store.get_file, file_id)
        if row is None or row.user_id != user_id:  # another user's file is "not found", never "forbidden"
            raise ApiError(404, "not_found", "no such file")
        return row
    try:
        expires = int(request.query.get("exp", ""))
    except ValueError:
        raise ApiError(401, "invalid_signature", "file URL has no valid expiry") from None
    if expires < time.time():
        raise ApiError(401, "signature_expired", "file URL has expired; ask for a new one")
    row = await store.run(store.get_file, file_id)
    if row is None:
        raise ApiError(404, "not_found", "no such file")
    if not request.app[SECRETS].check_file_url(file_id, row.user_id, expires, sig):
        raise ApiError(401, "invalid_signature", "file URL signature is not valid")
    return row


def _check_range(request: web.Request, size: int) -> None:
    """Refuse a bad Range here, so the 416 is our JSON error and not FileResponse's empty audio/* body."""
    unsatisfiable = ApiError(
        416,
        "range_not_satisfiable",
        f"Range must lie within the file's {size} bytes",
        {"Content-Range": f"bytes */{size}"},
    )
    try:
        wanted = request.http_range
    except ValueError:
        raise unsatisfiable from None
    if wanted.start is not None and wanted.start >= 0 and wanted.start >= size:
        raise unsatisfiable


@routes.get(f"/files/{FILE_ID}")
async def download(request: web.Request) -> web.StreamResponse:
    """The audio, with Range, If-Range and ETag handled by aiohttp's sendfile path."""
    row = await _authorized_row(request, request.match_info["file_id"])
    if row.status == "generating":
        return web.json_response({"status": "generating"}, status=202, headers={"Retry-After": "1"})
    if row.status == "failed":
        raise ApiError(410, "generation_failed", f"generation failed: {row.error}")
    if row.is_expired(time.time()):
        raise ApiError(410, "expired", "this audio has expired")
    path = request.app[BLOBS].path(row.id, row.format)
    try:
        size = path.stat().st_size
    except FileNotFoundError:  # purged a moment ago
        raise ApiError(404, "not_found", "no such file") from None
    _check_range(request, size)
    return web.FileResponse(
        path, headers={"Content-Type": CONTENT_TYPES[row.format], "Cache-Control": "private, max-age=86400"}
    )
