from __future__ import annotations

import asyncio
import time

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from speccyd.auth import require_user
from speccyd.errors import ApiError
from speccyd.keys import BLOBS, JOBS, SECRETS
from speccyd.routes.common import FILE_ID
from speccyd.store import FileRow
from speccyd.tts import CONTENT_TYPES

routes = web.RouteTableDef()


async def _authorized_row(request: web.Request, file_id: str) -> FileRow:
    """The file if the request may read it: by session token, or by the signature in a file URL."""
    jobs = request.app[JOBS]
    sig = request.query.get("sig")
    if sig is None:
        user_id = require_user(request)
        row = await jobs.get(file_id)
        if row is None or row.user_id != user_id:  # another user's file is "not found", never "forbidden"
            raise ApiError(404, "not_found", "no such file")
        return row
    try:
        expires = int(request.query.get("exp", ""))
    except ValueError:
        raise ApiError(401, "invalid_signature", "file URL has no valid expiry") from None
    if expires < time.time():
        raise ApiError(401, "signature_expired", "file URL has expired; ask for a new one")
    row = await jobs.get(file_id)
    if row is None:
        raise ApiError(404, "not_found", "no such file")
    if not request.app[SECRETS].check_file_url(file_id, row.user_id, expires, sig):
        raise ApiError(401, "invalid_signature", "file URL signature is not valid")
    return row


class AudioFileResponse(web.FileResponse):
    """aiohttp's FileResponse, plus If-Range with an entity tag (aiohttp only understands dates there).

    RFC 9110 13.1.5: when If-Range names an ETag that is not the current strong one, the Range is ignored
    and the whole file is sent, so a player never splices bytes of two different files.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if_range = request.headers.get(hdrs.IF_RANGE, "").strip()
        if if_range.startswith(('"', "W/")):
            try:
                st = await asyncio.get_running_loop().run_in_executor(None, self._path.stat)
            except OSError:
                return await super().prepare(request)  # gone: FileResponse answers 404
            current = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # the ETag FileResponse sends for this file
            if if_range != current:
                headers = {k: v for k, v in request.headers.items() if k.lower() != "range"}
                request = request.clone(headers=headers)
        return await super().prepare(request)


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
    if not path.is_file():  # purged a moment ago
        raise ApiError(404, "not_found", "no such file")
    return AudioFileResponse(
        path, headers={"Content-Type": CONTENT_TYPES[row.format], "Cache-Control": "private, max-age=86400"}
    )
