"""Sending audio: files with Range and the conditional requests of RFC 9110 on aiohttp's sendfile path, and
live files as they grow."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import re
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_fileresponse import _FileResponseResult
from multidict import CIMultiDict

from speccyd.generation.errors import FileNotFound
from speccyd.generation.live import LiveAborted, LiveFile
from speccyd.media.formats import CONTENT_TYPES
from speccyd.ops.metrics import Metrics
from speccyd.storage.records import FileRow
from speccyd.web.errors import ApiError
from speccyd.web.ranges import abort, requested_range


@dataclass(frozen=True)
class OpenAudio:
    """An audio file opened for one response: its bytes stay readable even if a DELETE unlinks it meanwhile."""

    path: Path
    file: io.BufferedReader
    st: os.stat_result

    @property
    def etag(self) -> str:
        """The ETag aiohttp's FileResponse sends for this file."""
        return f'"{self.st.st_mtime_ns:x}-{self.st.st_size:x}"'

    @property
    def last_modified(self) -> int:
        """The file's time as Last-Modified states it: whole seconds, rounded up as aiohttp rounds it."""
        return math.ceil(self.st.st_mtime)


async def open_audio(path: Path) -> OpenAudio:
    """Open the audio now, so a file deleted a moment later is either sent whole or was already gone (404)."""

    def opened() -> OpenAudio:
        f = path.open("rb")
        try:
            return OpenAudio(path, f, os.fstat(f.fileno()))
        except BaseException:
            f.close()
            raise

    try:
        return await asyncio.get_running_loop().run_in_executor(None, opened)
    except FileNotFoundError:
        raise FileNotFound() from None


_RANGE = {"range", "if-range"}
_CONDITIONS = {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}


def _precondition_failed(header: str) -> ApiError:
    return ApiError(412, "precondition_failed", f"the condition in {header} does not hold for this file")


# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, in a comma-separated list.
_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\U0010ffff]*")\s*(?:,|$)')


def _entity_tags(value: str) -> list[tuple[bool, str]]:
    """(weak, tag) for each entity tag of a list, up to the first thing that is not one."""
    tags, position = [], 0
    while position < len(value):
        match = _ENTITY_TAG.match(value, position)
        if match is None or match.end() == position:
            break
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def _tag_matches(value: str, etag: str | None, *, weak: bool) -> bool:
    """Whether an If-Match / If-None-Match value names the current representation (`etag`: None while the
    file is being generated and has none yet; "*" matches it anyway: it exists)."""
    if value.strip() == "*":
        return True
    if etag is None:
        return False
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in _entity_tags(value))


def not_modified(request: web.Request, etag: str | None, last_modified: int | None) -> bool:
    """The preconditions of RFC 9110 13.2.2, in its order: a failed If-Match or If-Unmodified-Since raises
    412; True when the answer is 304 Not Modified (If-None-Match, then If-Modified-Since)."""
    get = request.method in (hdrs.METH_GET, hdrs.METH_HEAD)
    if_match = request.headers.get(hdrs.IF_MATCH)
    if if_match is not None:
        if not _tag_matches(if_match, etag, weak=False):
            raise _precondition_failed("If-Match")
    elif (
        last_modified is not None
        and (before := request.if_unmodified_since) is not None  # one that is not a date is ignored
        and last_modified > before.timestamp()
    ):
        raise _precondition_failed("If-Unmodified-Since")
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None:
        if _tag_matches(if_none_match, etag, weak=True):
            if get:
                return True
            raise _precondition_failed("If-None-Match")
    elif get and last_modified is not None and (since := request.if_modified_since) is not None:
        return last_modified <= since.timestamp()
    return False


_EMPTY_SUFFIX = re.compile(r"\s*bytes\s*=\s*-0+\s*")


def _range_applies(request: web.Request, audio: OpenAudio) -> bool:
    """Whether the Range header is to be honoured (RFC 9110 14.2 and 13.1.5); a bad one that is gets a 416."""
    value = request.headers.get(hdrs.RANGE)
    if value is None or request.method != hdrs.METH_GET:
        return False  # Range is defined for GET only
    unit, equals, ranges = value.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return False  # a range unit we do not know is ignored, not refused
    if "," in ranges:
        return False  # several ranges: answered with the whole file rather than multipart/byteranges
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is not None and not _if_range_holds(request, if_range.strip(), audio):
        return False
    _check_range(request, audio.st.st_size)
    return True


def _if_range_holds(request: web.Request, value: str, audio: OpenAudio) -> bool:
    # A strong ETag that is this file's, or the exact date its Last-Modified says; anything else (a weak tag,
    # a stale one, a string that is neither) means "send the whole file", so no bytes of two versions splice.
    if value.startswith('"'):
        return value == audio.etag
    if value.startswith("W/"):
        return False
    date = request.if_range
    return date is not None and int(date.timestamp()) == audio.last_modified


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


class AudioFileResponse(web.FileResponse):
    """aiohttp's FileResponse (its sendfile path) for a file opened by `open_audio`, its conditions decided.

    Counted in `speccyd_active_streams` while it is sent (all of it happens in prepare).
    """

    def __init__(self, metrics: Metrics, audio: OpenAudio, headers: dict[str, str], request: web.Request) -> None:
        super().__init__(audio.path, headers=headers)
        self._audio = audio
        self._active = metrics.active_streams
        self._request = request

    def _make_response(
        self, request: web.BaseRequest, accept_encoding: str
    ) -> tuple[_FileResponseResult, io.BufferedReader | None, os.stat_result, str | None]:
        # aiohttp would stat and open the path again here: a DELETE in between got a 404 with the audio
        # Content-Type and an empty body. The file is already open, and its preconditions already decided.
        return _FileResponseResult.SEND_FILE, self._audio.file, self._audio.st, None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._active.inc()
        try:
            return await super().prepare(self._request)
        finally:
            self._active.dec()


def whole_file_request(request: web.Request) -> web.Request:
    """The request without Range and conditional headers, for `audio_response(conditional=False)`; made
    before the body is read (aiohttp clones only an unread request)."""
    return _without(request, _RANGE | _CONDITIONS)


def _without(request: web.Request, names: set[str]) -> web.Request:
    # Only ASCII values: clone() encodes them as UTF-8, and a header byte past ASCII (a surrogate escape here)
    # made it raise, so the connection dropped with a traceback in the log.
    # A multidict, not a dict: with a header sent twice, a dict would keep the last value while every check
    # here read the first (a second, bad Range reached FileResponse, which answered an empty 416).
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in names and v.isascii())
    return request.clone(headers=headers)


async def audio_response(
    request: web.Request, metrics: Metrics, path: Path, headers: dict[str, str], *, conditional: bool = True
) -> web.StreamResponse:
    """The audio at `path` for this request: 304, 206, 200, or a JSON 404/412/416.

    `conditional=False` (POST /v1/audio/speech) answers the whole file whatever Range and conditions say:
    both are defined for reading a resource, not for the answer of a POST. `request` is then one made by
    `whole_file_request`.
    """
    audio = await open_audio(path)
    try:
        if not conditional:
            return AudioFileResponse(metrics, audio, headers, request)
        if not_modified(request, audio.etag, audio.last_modified):
            audio.file.close()
            last_modified = formatdate(audio.last_modified, usegmt=True)
            return web.Response(status=304, headers={**headers, "ETag": audio.etag, "Last-Modified": last_modified})
        ranged = _range_applies(request, audio)
    except BaseException:
        audio.file.close()
        raise
    return AudioFileResponse(metrics, audio, headers, _without(request, {"if-range"} if ranged else _RANGE))


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


def _restarting() -> ApiError:
    return ApiError(503, "shutting_down", "the server is restarting; ask again in a moment", {"Retry-After": "1"})


async def live_response(request: web.Request, live: LiveFile, row: FileRow) -> web.StreamResponse | None:
    """A file still being generated, as a progressive download; None once it is finished (serve it as ready).

    Every byte sent is a byte of the finished file, so an interrupted download resumed with `curl -C -` or
    `wget -c` ends with exactly the finished file's bytes (docs/streaming.md, "Progressive downloads"):
    - no Range: the audio so far, then the rest as it is generated (chunked, `stream_live`);
    - `bytes=a-b`: 206 with `Content-Range: bytes a-b/*` once those bytes are final (the total length is
      not known yet, RFC 9110 §14.4); a range past the end gets the finished file's 416;
    - `bytes=a-` and `bytes=-n` need the end, so they are answered from the finished file (`bytes=0-`, the
      whole stream, is answered as if there were no Range: what ffmpeg sends first);
    - a joined WAV (its RIFF sizes) or a chaptered mp3 (the times in its tag) changes its first bytes at the
      end: every GET waits for the finished file. HLS plays those at once.
    If-Range cannot name a file that is not finished, so with it the Range is ignored (RFC 9110 §13.1.5).
    """
    timeline = live.timeline
    wanted = requested_range(request) if hdrs.IF_RANGE not in request.headers else None
    if wanted is not None and wanted.first == 0 and wanted.last is None:
        wanted = None  # "everything from byte 0" is the whole stream: ffmpeg asks this way, and plays at once
    if request.method == "HEAD" and wanted is None:
        return await stream_live(request, live, row)
    await live.planned()  # then header_final is known
    header_final = timeline is None or timeline.header_final
    if not header_final or (wanted is not None and (wanted.first is None or wanted.last is None)):
        await live.settled()
    elif wanted is not None:
        assert wanted.last is not None
        await live.settled_past(wanted.last)
    if live.abandoned:
        raise _restarting()
    if live.state != "generating":
        return None
    if wanted is None:
        return await stream_live(request, live, row)
    assert wanted.first is not None and wanted.last is not None
    first, last = wanted.first, wanted.last
    response = web.StreamResponse(
        status=206,
        headers={
            "Content-Type": CONTENT_TYPES[row.format],
            "Content-Range": f"bytes {first}-{last}/*",
            "Cache-Control": "no-store",
            "Accept-Ranges": "bytes",
        },
    )
    response.content_length = last - first + 1
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        fd = live.open_reader()
        try:
            position = first
            while position <= last:
                # Final bytes of a file being written: a page-cache copy, as in LiveFile.follow.
                data = os.pread(fd, min(64 * 1024, last + 1 - position), position)
                if not data:
                    raise ConnectionResetError("the live file is shorter than its final bytes")
                await response.write(data)
                position += len(data)
        finally:
            os.close(fd)
    except (LiveAborted, ConnectionError, OSError):
        abort(request)  # the headers are out: only a cut connection can say the body is incomplete
        return response
    await response.write_eof()
    return response
