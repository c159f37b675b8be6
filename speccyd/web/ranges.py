"""Byte ranges for responses aiohttp's FileResponse cannot send: HLS segments (a timestamp tag, then a byte
range of the audio file) and the final part of a file still being generated.

RFC 9110 §14.2: a Range in another unit, one that does not parse, or several ranges at once may be
ignored (the whole representation, 200); a valid range outside the representation is 416.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

from aiohttp import hdrs, web

from speccyd.media import hls
from speccyd.web.errors import ApiError

_RANGE = re.compile(r"bytes[ \t]*=[ \t]*(\d{0,18})[ \t]*-[ \t]*(\d{0,18})[ \t]*", re.IGNORECASE)
# A year: an immutable segment never needs revalidating (RFC 8246), and is private to its user.
SEGMENT_CACHE = "private, max-age=31536000, immutable"
_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class ByteRange:
    first: int | None  # None: a suffix range ("the last `last` bytes")
    last: int | None  # None: to the end

    def resolve(self, size: int) -> tuple[int, int] | None:
        """The inclusive byte positions this range names in `size` bytes; None if none (416)."""
        if self.first is None:
            assert self.last is not None
            return (max(0, size - self.last), size - 1) if self.last and size else None
        if self.first >= size:
            return None
        return self.first, size - 1 if self.last is None else min(self.last, size - 1)


def requested_range(request: web.BaseRequest) -> ByteRange | None:
    """The one byte range asked for, or None when there is none or it is to be ignored (§14.2)."""
    header = request.headers.get(hdrs.RANGE)
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # another unit, several ranges, or bad syntax: the whole representation
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        return ByteRange(None, int(last))
    if last and int(last) < int(first):
        return None  # §14.1.1: an invalid range-spec; the set has no valid one
    return ByteRange(int(first), int(last) if last else None)


def unsatisfiable(size: int | str) -> ApiError:
    return ApiError(
        416, "range_not_satisfiable", f"Range must lie within the {size} bytes", {"Content-Range": f"bytes */{size}"}
    )


async def segment_response(
    request: web.Request, segment: hls.Segment, etag: str, source: int, content_type: str
) -> web.StreamResponse:
    """One packed-audio segment: its ID3 timestamp tag, then its frames straight from the audio file's fd
    `source` (sendfile where the transport allows), with a strong ETag, Range and If-Range. Closes `source`."""
    try:
        headers = {
            "Content-Type": content_type,
            "ETag": etag,
            "Cache-Control": SEGMENT_CACHE,
            "Accept-Ranges": "bytes",
        }
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if if_none_match is not None and (
            if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]
        ):
            return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        size = segment.size
        wanted = requested_range(request)
        if_range = request.headers.get(hdrs.IF_RANGE)
        if wanted is not None and if_range is not None and if_range.strip() != etag:
            wanted = None  # §13.1.5: not this version (a date never matches: no Last-Modified is sent)
        first, last = 0, size - 1
        status = 200
        if wanted is not None:
            span = wanted.resolve(size)
            if span is None:
                raise unsatisfiable(size)
            first, last = span
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = last - first + 1
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            tag = segment.tag()
            if first < len(tag):
                await response.write(tag[first : last + 1])
            start = segment.start + max(0, first - len(tag))
            count = last + 1 - max(first, len(tag))
            if count > 0:
                await _send_range(request, response, source, start, count)
        except (ConnectionError, OSError):
            abort(request)  # the headers are out: no error response can follow, only a cut connection
            return response
        await response.write_eof()
        return response
    finally:
        os.close(source)


def abort(request: web.BaseRequest) -> None:
    """End a response whose headers were sent: closing the connection tells the client it is incomplete."""
    if request.transport is not None:
        request.transport.close()


async def _send_range(request: web.Request, response: web.StreamResponse, fd: int, start: int, count: int) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        try:
            # Waits for what is already buffered (the headers and tag) to go first, then sendfile(2); over
            # TLS asyncio copies through the transport itself (read in a thread, flow-controlled), as
            # aiohttp's FileResponse lets it.
            await asyncio.get_running_loop().sendfile(transport, f, start, count)
            return
        except NotImplementedError:
            pass  # an event loop without sendfile at all (nothing was sent): copy in blocks
    while count > 0:
        data = os.pread(fd, min(_BLOCK, count), start)
        if not data:
            raise ConnectionResetError("the audio file is shorter than its segment table")
        await response.write(data)
        start += len(data)
        count -= len(data)
