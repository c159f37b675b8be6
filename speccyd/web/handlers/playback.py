"""Playback for the apps: the HLS playlist and its segments, the read-along timeline, and resume positions.

Everything here is authorised like the audio itself (session header, or the file's signed URL), with the
same 404 for another user's file. Segment URIs in a playlist carry the signature of the playlist's own URL,
so AVPlayer needs no header, and every reload of that URL lists exactly the same URIs.
"""

from __future__ import annotations

import math
import os
from typing import Any

from aiohttp import web

from speccyd.appkeys import BLOBS, CLOCK, FILES, RUNNER, SECRETS
from speccyd.config.units import iso
from speccyd.generation.errors import FileNotFound, InvalidRequest, NotStreamable
from speccyd.generation.live import LiveAborted
from speccyd.generation.timeline import HLS_FORMATS, SEGMENT_TARGET, LiveTimeline, hls_segments
from speccyd.media import hls
from speccyd.media.formats import CONTENT_TYPES
from speccyd.storage.records import FileRow, TimelineRecord
from speccyd.web.auth import require_user, signed_url_expiry
from speccyd.web.common import FILE_ID, json_body
from speccyd.web.handlers.files import _authorized_row
from speccyd.web.ranges import segment_response

routes = web.RouteTableDef()

SEGMENT = r"{segment:[0-9a-f]{16}-[0-9]{1,7}\.(?:mp3|aac)}"
MAX_DEVICE = 100  # a device name the apps show ("Anna's iPhone"), not a document
_GENERATING_ELSEWHERE = {"Retry-After": "1"}


def _streamable(row: FileRow) -> None:
    if row.format not in HLS_FORMATS:
        raise NotStreamable(
            f"{row.format} audio has no HLS form (packed audio is mp3 or aac only): play its url once it is "
            "ready, or ask for mp3 or aac"
        )


def _segment_signature(request: web.Request, row: FileRow) -> tuple[int, str]:
    """exp and sig for the segment URIs: the playlist URL's own when it is signed (so every reload of it lists
    the same URIs), else the file's expiry, as its `url` is signed."""
    sig = request.query.get("sig")
    if sig is not None:
        return signed_url_expiry(request), sig  # checked already by _authorized_row
    expires = int(row.expires_at)
    return expires, request.app[SECRETS].sign_file_url(row.id, row.user_id, expires)


def _playlist(
    request: web.Request, row: FileRow, run: str, segments: list[hls.Segment], *, complete: bool, event: bool
) -> web.Response:
    exp, sig = _segment_signature(request, row)
    text = hls.media_playlist(
        segments,
        lambda s: f"segments/{run}-{s.index}.{row.format}?exp={exp}&sig={sig}",
        target=SEGMENT_TARGET,
        complete=complete,
        event=event,
        independent=row.format == "aac",  # ADTS frames stand alone; mp3 frames borrow from the one before
        start_at_beginning=True,
    )
    return web.Response(
        body=text.encode("utf-8"),  # RFC 8216 §4: always UTF-8, so no charset parameter is needed
        content_type=hls.MIME_TYPE,
        # A live playlist grows: every reload must reach the server. A complete one only changes its URIs'
        # expiry (a cache hit extends the file's life).
        headers={"Cache-Control": "private, max-age=3600" if complete else "no-cache"},
    )


def _live_timeline(request: web.Request, row: FileRow) -> LiveTimeline | None:
    live = request.app[RUNNER].live(row.id)
    if live is None or live.state != "generating":
        return None
    return live.timeline


async def _current(request: web.Request, row: FileRow) -> FileRow:
    """The row again, after its generation finished between two looks (or in another process)."""
    fresh = await request.app[FILES].get(row.id)
    if fresh is None:
        raise FileNotFound()
    return fresh


@routes.get(f"/files/{FILE_ID}/playlist.m3u8")
async def playlist(request: web.Request) -> web.StreamResponse:
    """The HLS media playlist: EVENT while generating (segments appended as the audio arrives, #EXT-X-ENDLIST
    when complete); VOD for a file that was ready before any playlist of it was served."""
    row = await _authorized_row(request, request.match_info["file_id"])
    _streamable(row)
    if row.status == "generating":
        timeline = _live_timeline(request, row)
        if timeline is not None:
            segments = timeline.segments()
            complete = timeline.complete
            event = timeline.event if complete and timeline.event is not None else True
            if not complete:
                # From here on these segments are promised: a failed attempt can no longer take them back.
                timeline.note_served(len(segments))
            return _playlist(request, row, timeline.run, segments, complete=complete, event=event)
        row = await _current(request, row)
        if row.status == "generating":
            return web.json_response({"status": "generating"}, status=202, headers=_GENERATING_ELSEWHERE)
    request.app[FILES].check_servable(row, request.app[CLOCK].now())
    record = await request.app[FILES].timeline(row)
    return _playlist(request, row, record.run, hls_segments(record), complete=True, event=record.served_live)


@routes.get(f"/files/{FILE_ID}/segments/{SEGMENT}")
async def segment(request: web.Request) -> web.StreamResponse:
    """One packed-audio segment, served from the audio file's bytes; immutable once listed."""
    row = await _authorized_row(request, request.match_info["file_id"])
    run, _, rest = request.match_info["segment"].partition("-")
    index_text, _, ext = rest.partition(".")
    index = int(index_text)
    if ext != row.format:
        raise FileNotFound("no such segment")
    content_type = CONTENT_TYPES[row.format]
    etag = f'"{run}-{index}"'
    if row.status == "generating":
        live = request.app[RUNNER].live(row.id)
        timeline = live.timeline if live is not None and live.state == "generating" else None
        if live is not None and timeline is not None and timeline.run == run:
            # Only segments a served playlist listed (or all, once complete): an unlisted one may still go.
            listed = timeline.segments()[: len(timeline.segments()) if timeline.complete else timeline.served]
            if index >= len(listed):
                raise FileNotFound("no such segment (yet)")
            try:
                fd = live.open_reader()
            except LiveAborted:  # removed a moment ago: the generation failed or was deleted
                raise FileNotFound() from None
            return await segment_response(request, listed[index], etag, fd, content_type)
        row = await _current(request, row)
        if row.status == "generating":
            raise FileNotFound("no such segment")
    request.app[FILES].check_servable(row, request.app[CLOCK].now())
    record = await request.app[FILES].timeline(row)
    if record.run != run or index >= len(record.segments):
        raise FileNotFound("no such segment")
    path = request.app[BLOBS].local_path(row.id, row.format)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise FileNotFound() from None  # purged a moment ago
    return await segment_response(request, hls_segments(record)[index], etag, fd, content_type)


def _timeline_json(record: TimelineRecord, complete: bool) -> dict[str, Any]:
    rate = record.sample_rate or 1

    def seconds(samples: int) -> float:
        return round(samples / rate, 6)

    segments = []
    at = 0
    for piece in record.pieces:
        segments.append(
            {
                "text_start": piece.text_start,
                "text_end": piece.text_end,
                "audio_start_s": seconds(at),
                "audio_end_s": seconds(at + piece.samples),
            }
        )
        at += piece.samples
    return {
        "duration_s": seconds(at),
        "complete": complete,
        "segments": segments,
        "chapters": [
            {"title": c.title, "text_start": c.text_start, "audio_start_s": seconds(c.sample)} for c in record.chapters
        ],
    }


@routes.get(f"/files/{FILE_ID}/timeline")
async def timeline(request: web.Request) -> web.Response:
    """Which text is spoken when (code-point offsets, seconds from the frames produced), and the chapters."""
    row = await _authorized_row(request, request.match_info["file_id"])
    if row.status == "generating":
        live = _live_timeline(request, row)
        if live is not None:
            return web.json_response(_timeline_json(live.record(), complete=False))
        row = await _current(request, row)
        if row.status == "generating":  # generated by another process: nothing known here yet
            return web.json_response({"duration_s": 0.0, "complete": False, "segments": [], "chapters": []})
    request.app[FILES].check_servable(row, request.app[CLOCK].now())
    return web.json_response(_timeline_json(await request.app[FILES].timeline(row), complete=True))


def _position(body: dict[str, Any]) -> tuple[float, str | None]:
    value = body.get("position_s")
    bad = InvalidRequest("invalid_position", "position_s must be a number of seconds, 0 or more", "position_s")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    try:
        seconds = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise bad from None
    if not math.isfinite(seconds) or seconds < 0:
        raise bad
    device = body.get("device")
    if device is not None:
        if not isinstance(device, str) or len(device) > MAX_DEVICE or not device.isprintable():
            raise InvalidRequest(
                "invalid_device", f"device must be a printable string of at most {MAX_DEVICE} characters", "device"
            )
        try:
            device.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
            raise InvalidRequest("invalid_device", "device must be valid Unicode", "device") from None
        device = device.strip() or None
    return seconds, device


@routes.put(f"/files/{FILE_ID}/position")
async def position(request: web.Request) -> web.Response:
    """Where the user stopped listening, for every device: the last write (by server time) wins."""
    user_id = require_user(request)
    seconds, device = _position(await json_body(request))
    row = await request.app[FILES].set_position(user_id, request.match_info["file_id"], seconds, device)
    return web.json_response(
        {
            "file_id": row.id,
            "position_s": round(row.position_s or 0.0, 3),
            "device": row.position_device,
            "updated_at": iso(row.position_at),
        }
    )
