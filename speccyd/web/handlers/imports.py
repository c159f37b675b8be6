"""POST /files/import: audio a user already has (an app's cache) becomes a ready file on the server.

multipart/form-data with two parts, in this order: `request`, the JSON fields of the /tts/generate request
that produced the audio (text, voice, model, format, speed, instructions; content_hash optionally, checked),
then `audio`, the file. The fields come first so that a bad request is refused before any audio is sent,
and so the server knows the format to check while the audio streams to disk. The 1 MiB body limit of the
JSON endpoints does not apply: the audio has its own limit, max_import_size.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import Callable
from typing import IO, Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from speccyd.appkeys import BLOBS, FILES, METRICS, SETTINGS
from speccyd.config.units import format_size
from speccyd.generation.errors import AudioTooLarge, InvalidAudio, InvalidRequest, QuotaExceeded
from speccyd.generation.speech import SpeechRequest, parse_speech_request
from speccyd.web.auth import require_user
from speccyd.web.common import file_json, own_body_limit
from speccyd.web.errors import ApiError

routes = web.RouteTableDef()

MAX_FIELDS = 1024 * 1024  # the `request` part: the JSON limit of every other endpoint
# Bytes per second an upload must average, after client_timeout of grace: a 64 MB file may take 17 minutes
# (a phone on poor Wi-Fi), a connection trickling a byte at a time cannot hold its slot for ever.
MIN_RATE = 64 * 1024
READ = 256 * 1024
_HASH = re.compile(r"^[0-9a-f]{64}$")


class _Body:
    """Reads the multipart body with an idle timeout (client_timeout) and an overall deadline."""

    def __init__(self, request: web.Request) -> None:
        settings = request.app[SETTINGS]
        self._idle = settings.client_timeout
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + settings.client_timeout + (settings.max_import_size + MAX_FIELDS) / MIN_RATE

    async def _wait(self, reading: Any) -> Any:
        left = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, min(self._idle, left))):
                return await reading
        except TimeoutError:
            raise ApiError(
                408, "request_timeout", f"the upload stalled for {self._idle:g}s or averaged under 64 kB/s"
            ) from None
        except (ValueError, RuntimeError, AssertionError, ConnectionError, HttpProcessingError) as e:
            # aiohttp's multipart reader raises these for a body that is not what its headers say.
            raise ApiError(400, "invalid_multipart", f"the multipart body cannot be read: {e}") from None

    async def part(self, reader: MultipartReader) -> BodyPartReader | None:
        part = await self._wait(reader.next())
        if part is not None and not isinstance(part, BodyPartReader):
            raise ApiError(400, "invalid_import", "nested multipart parts are not accepted")
        return part

    async def chunk(self, part: BodyPartReader) -> bytes:
        data: bytes = await self._wait(part.read_chunk(READ))
        return data

    async def small(self, part: BodyPartReader, limit: int) -> bytes:
        data = bytearray()
        while block := await self.chunk(part):
            data += block
            if len(data) > limit:
                raise ApiError(413, "body_too_large", f"the request part is larger than {format_size(limit)}")
        return bytes(data)


def _fields(raw: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_json", "the request part is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request part is nested too deeply") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "invalid_body", "the request part must be a JSON object")
    return fields


def _speech(fields: dict[str, Any], max_text_chars: int) -> SpeechRequest:
    # Imported audio is whole already: the "cannot be joined" limit of long opus/flac text does not apply.
    speech = parse_speech_request(fields, max_text_chars, max_text_chars)
    claimed = fields.get("content_hash")
    if claimed is not None:
        if not isinstance(claimed, str) or not _HASH.match(claimed):
            raise InvalidRequest("invalid_content_hash", "content_hash must be 64 lowercase hex digits", "content_hash")
        if claimed != speech.content_hash:
            raise InvalidRequest(
                "content_hash_mismatch",
                f"these fields hash to {speech.content_hash}, not {claimed}: check them (speed with two "
                "decimals, no instructions as none) against the request that made the audio",
                "content_hash",
            )
    return speech


async def _receive(body: _Body, part: BodyPartReader, sink: Callable[[bytes], Any], limit: int) -> None:
    """The audio part, block by block into `sink`, refused past `limit` bytes."""
    received = 0
    while block := await body.chunk(part):
        received += len(block)
        if received > limit:
            raise AudioTooLarge(
                f"the audio is larger than this server's import limit of {format_size(limit)} (max_import_size)"
            )
        sink(block)


@routes.post("/files/import")
@own_body_limit  # max_import_size, checked below from Content-Length and as the audio arrives
async def import_audio(request: web.Request) -> web.Response:
    """Store the audio of a request the user has already paid for: 201 new, 200 already here, 202 generating."""
    user_id = require_user(request)
    settings, outcomes = request.app[SETTINGS], request.app[METRICS].imports
    if request.content_type != "multipart/form-data":
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data: a 'request' part (JSON) and an 'audio' part"
        )
    if (request.content_length or 0) > settings.max_import_size + MAX_FIELDS + 64 * 1024:
        outcomes.labels("too_large").inc()  # refused before a byte of it is read
        raise AudioTooLarge(
            f"the upload is larger than this server's import limit of {format_size(settings.max_import_size)} "
            "(max_import_size)"
        )
    body = _Body(request)
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as e:
        raise ApiError(400, "invalid_multipart", f"the multipart body cannot be read: {e}") from None
    first = await body.part(reader)
    if first is None or first.name not in ("request", "audio"):
        raise ApiError(400, "invalid_import", "the parts are 'request' (the JSON fields of the audio) and 'audio'")
    try:
        return await _store(request, body, reader, first, user_id)
    except AudioTooLarge:
        outcomes.labels("too_large").inc()
        raise
    except InvalidAudio:
        outcomes.labels("invalid_audio").inc()
        raise
    except QuotaExceeded:
        outcomes.labels("quota_exceeded").inc()
        raise


async def _store(
    request: web.Request, body: _Body, reader: MultipartReader, first: BodyPartReader, user_id: str
) -> web.Response:
    """The two parts, in either order, then the audio stored (or the file that is already there)."""
    settings, files, outcomes = request.app[SETTINGS], request.app[FILES], request.app[METRICS].imports
    spool: IO[bytes] | None = None
    fields_part = first
    try:
        if first.name == "audio":
            # The audio first (a generated client may order the parts by name): kept on disk, unread, until
            # the request part says what it is meant to be.
            spool = tempfile.TemporaryFile(dir=request.app[BLOBS].spool_dir)  # noqa: SIM115 - closed below
            await _receive(body, first, spool.write, settings.max_import_size)
            second = await body.part(reader)
            if second is None or second.name != "request":
                raise ApiError(400, "invalid_import", "after 'audio' the part must be 'request': its JSON fields")
            fields_part = second
        speech = _speech(_fields(await body.small(fields_part, MAX_FIELDS)), settings.max_text_chars)
        audio_part = None
        if spool is None:
            audio_part = await body.part(reader)
            if audio_part is None or audio_part.name != "audio":
                raise ApiError(400, "invalid_import", "after 'request' the part must be 'audio': the audio file")

        existing = await files.import_existing(user_id, speech.content_hash)
        if existing is not None:
            if audio_part is not None:  # read to the end, so the client gets its answer; not stored
                await _receive(body, audio_part, lambda block: None, settings.max_import_size)
            outcomes.labels("kept").inc()
            return web.json_response(file_json(request, existing), status=200 if existing.status == "ready" else 202)

        upload = files.importer.upload(speech.format)
        try:
            if spool is not None:
                spool.seek(0)
                while block := spool.read(READ):
                    upload.write(block)
            else:
                assert audio_part is not None
                await _receive(body, audio_part, upload.write, settings.max_import_size)
            if await body.part(reader) is not None:
                raise ApiError(400, "invalid_import", "only two parts: 'request' and 'audio'")
            imported = await files.import_upload(user_id, speech, upload)
        finally:
            upload.discard()  # a no-op once it was stored
    finally:
        if spool is not None:
            spool.close()
    outcomes.labels("imported" if imported.created else "kept").inc()
    status = 201 if imported.created else 200 if imported.row.status == "ready" else 202
    return web.json_response(file_json(request, imported.row), status=status)
