from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from speccyd.appkeys import BLOBS, JOBS, METRICS, SECRETS
from speccyd.generation.live import LiveAborted, LiveFile
from speccyd.generation.speech import CONTENT_TYPES
from speccyd.ops.metrics import CountedFileResponse
from speccyd.storage.database import FileRow
from speccyd.web.auth import require_user
from speccyd.web.common import FILE_ID
from speccyd.web.errors import ApiError

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


def etag(st: os.stat_result) -> str:
    """The ETag aiohttp's FileResponse sends for a file with this stat."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _range_applies(request: web.Request, path: Path) -> bool:
    """Whether the Range will be honoured: always without If-Range; with it, only if it names this version."""
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is None:
        return True
    try:
        st = path.stat()
    except OSError:  # gone: FileResponse answers 404 whatever the Range
        return False
    if if_range.strip().startswith(('"', "W/")):
        return if_range.strip() == etag(st)
    since = request.if_range  # a date; FileResponse treats one it cannot parse as a match
    return since is None or st.st_mtime <= since.timestamp()


class AudioFileResponse(CountedFileResponse):
    """aiohttp's FileResponse, plus If-Range with an entity tag (aiohttp only understands dates there).

    Counted in the active-streams metric while it is sent.

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
            if if_range != etag(st):
                # Only ASCII values: clone() encodes them as UTF-8, and a header byte past ASCII (a surrogate
                # escape here) made it raise, so the connection dropped with a traceback in the log.
                headers = {k: v for k, v in request.headers.items() if k.lower() != "range" and v.isascii()}
                request = request.clone(headers=headers)
        return await super().prepare(request)


_EMPTY_SUFFIX = re.compile(r"\s*bytes\s*=\s*-0+\s*")


def _check_range(request: web.Request, size: int) -> None:
    """Refuse a bad Range here, so the 416 is our JSON error and not FileResponse's empty audio/* body."""
    unsatisfiable = ApiError(
        416,
        "range_not_satisfiable",
        f"Range must lie within the file's {size} bytes",
        {"Content-Range": f"bytes */{size}"},
    )
    # "bytes=-0" asks for the last zero bytes (RFC 9110: unsatisfiable); aiohttp reads it as the whole file.
    if _EMPTY_SUFFIX.fullmatch(request.headers.get(hdrs.RANGE, "")):
        raise unsatisfiable
    try:
        wanted = request.http_range
    except ValueError:
        raise unsatisfiable from None
    if wanted.start is not None and wanted.start >= 0 and wanted.start >= size:
        raise unsatisfiable


@routes.get(f"/files/{FILE_ID}")
async def download(request: web.Request) -> web.StreamResponse:
    """The audio, with Range, If-Range and ETag handled by aiohttp's sendfile path; live while generating."""
    row = await _authorized_row(request, request.match_info["file_id"])
    if row.status == "generating":
        live = request.app[JOBS].live(row.id)
        if live is not None and live.state == "generating":
            return await stream_live(request, live, row)
        # Finished between the two looks, or generated by another process: look again.
        fresh = await request.app[JOBS].get(row.id)
        if fresh is None:
            raise ApiError(404, "not_found", "no such file")
        row = fresh
        if row.status == "generating":
            return web.json_response({"status": "generating"}, status=202, headers={"Retry-After": "1"})
    if row.status == "failed":
        raise ApiError(410, "generation_failed", f"generation failed: {row.error}")
    if row.is_expired(time.time()):
        raise ApiError(410, "expired", "this audio has expired")
    blobs = request.app[BLOBS]
    if not blobs.exists(row.id, row.format):  # purged a moment ago
        raise ApiError(404, "not_found", "no such file")
    path = blobs.path(row.id, row.format)
    # The row knows the size, so no extra stat without If-Range. With it the Range may not apply at all (a
    # stat tells); when it does, a bad one must still get our JSON 416, not FileResponse's empty audio/* body.
    if hdrs.RANGE in request.headers and row.size_bytes is not None and _range_applies(request, path):
        _check_range(request, row.size_bytes)
    return AudioFileResponse(
        request.app[METRICS],
        path,
        headers={"Content-Type": CONTENT_TYPES[row.format], "Cache-Control": "private, max-age=86400"},
    )


async def stream_live(
    request: web.Request, live: LiveFile, row: FileRow, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """The audio so far, then the rest as it is generated, with chunked transfer encoding.

    A Range header is ignored (a plain 200 is always a valid answer): the total size is not known yet.
    A stream that cannot complete is cut without the final empty chunk, so no client takes it for a
    short but complete file.
    """
    response = web.StreamResponse(
        headers={"Content-Type": CONTENT_TYPES[row.format], "Cache-Control": "no-store", **(headers or {})}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        # aclosing: the reader's fd is closed as soon as the stream ends, however it ends.
        async with contextlib.aclosing(live.follow()) as stream:
            async for data in stream:
                await response.write(data)
    except LiveAborted:
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionResetError:  # the reader left; the job and other readers carry on
        return response
    await response.write_eof()
    return response
