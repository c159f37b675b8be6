"""Sending audio: files with Range/If-Range/ETag on aiohttp's sendfile path, and live files as they grow."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from speccyd.generation.live import LiveAborted, LiveFile
from speccyd.media.formats import CONTENT_TYPES
from speccyd.ops.metrics import Metrics
from speccyd.storage.records import FileRow
from speccyd.web.errors import ApiError


class CountedFileResponse(web.FileResponse):
    """A FileResponse counted in `speccyd_active_streams` while aiohttp sends it (all of it is in prepare)."""

    def __init__(self, metrics: Metrics, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._active = metrics.active_streams

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._active.inc()
        try:
            return await super().prepare(request)
        finally:
            self._active.dec()


def etag(st: os.stat_result) -> str:
    """The ETag aiohttp's FileResponse sends for a file with this stat."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def range_applies(request: web.Request, path: Path) -> bool:
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


def check_range(request: web.Request, size: int) -> None:
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
