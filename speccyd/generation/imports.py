"""Bringing existing audio in: an upload (POST /files/import) or a file on disk (`speccyd import`) becomes a
ready file of a user, once every byte of it is proven to be audio of the format its request names.

The request fields give the content hash exactly as /tts/generate computes it (SpeechRequest), so the next
generate for the same request is a cache hit with no upstream call. The bytes go to a blob writer's temp file
as they arrive (never all in memory), are validated there (speccyd.media.validate, off the event loop),
committed (fsync, rename), and only then registered in one transaction with the same rules as a generation's
claim (Database.import_file): audio the user already has is kept and the upload dropped, and a new file must
fit the user's storage and file limits whole. Nothing invalid, too large or over quota is ever stored.
"""

from __future__ import annotations

import asyncio
import errno
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speccyd.config.clock import Clock
from speccyd.config.settings import Settings
from speccyd.config.units import format_size
from speccyd.generation.errors import AudioTooLarge, InvalidAudio
from speccyd.generation.quotas import quota_error
from speccyd.generation.speech import SpeechRequest
from speccyd.media.validate import READ_BLOCK, AudioError, AudioInfo, validate_file
from speccyd.storage.blobs import BlobStore, BlobWriter
from speccyd.storage.database import Database
from speccyd.storage.errors import LimitReached, StorageFull
from speccyd.storage.records import FileRow, Limits

# Validation is pure Python (FLAC's CRC-16 about 25 MB/s): two at a time keep both cores of a small NAS busy
# without letting a burst of uploads starve the event loop of the GIL.
VALIDATE_CONCURRENCY = 2
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class Imported:
    row: FileRow
    created: bool  # a new file from this upload; False: the user had this audio already (or it is generating)
    audio: AudioInfo | None  # what the upload was, when it was read
    replaced: FileRow | None = None  # a failed or expired file of the same content that this one replaced


class Upload:
    """One audio file arriving: written to a temp file as it comes, refused as soon as it passes the limit."""

    def __init__(self, writer: BlobWriter, fmt: str, file_id: str, limit: int) -> None:
        self.writer = writer
        self.format = fmt
        self.file_id = file_id
        self.limit = limit
        self.size = 0
        self.done = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.discard()
            raise AudioTooLarge(
                f"the audio is larger than this server's import limit of {format_size(self.limit)} (max_import_size)"
            )
        try:
            self.writer.write(data)
        except OSError as e:
            self.discard()
            raise _storage_error(e) or e from None

    def discard(self) -> None:
        if not self.done:
            self.done = True
            self.writer.discard()


def audio_problem(fmt: str, error: AudioError) -> str:
    """The sentence an owner reads: "invalid mp3 audio: the file is truncated: ..." (or "not mp3 audio: ...")."""
    reason = str(error)
    return reason if reason.startswith("not ") else f"invalid {fmt} audio: {reason}"


def _storage_error(e: OSError) -> StorageFull | None:
    return StorageFull(str(e)) if e.errno in _NO_SPACE else None


class Importer:
    """Stores imported audio for users; shared by the HTTP handler (through FileService) and the CLI."""

    def __init__(
        self, settings: Settings, db: Database, blobs: BlobStore, clock: Clock, limits: Callable[[], Limits]
    ) -> None:
        self._settings = settings
        self._db = db
        self._blobs = blobs
        self._clock = clock
        self._limits = limits  # the server-wide defaults as they are now (SIGHUP replaces them)
        self._validating = asyncio.Semaphore(VALIDATE_CONCURRENCY)

    @property
    def max_size(self) -> int:
        return self._settings.max_import_size

    async def existing(self, user_id: str, content_hash: str) -> FileRow | None:
        """The user's file for this content if an import would keep it: ready and unexpired, or generating."""
        row = await self._db.get_by_hash(user_id, content_hash)
        if row is None or row.status == "failed" or row.is_expired(self._clock.now()):
            return None
        return row

    def upload(self, fmt: str) -> Upload:
        file_id = uuid.uuid4().hex
        try:
            writer = self._blobs.writer(file_id, fmt)
        except OSError as e:
            raise _storage_error(e) or e from None
        return Upload(writer, fmt, file_id, self.max_size)

    async def store(self, user_id: str, speech: SpeechRequest, upload: Upload) -> Imported:
        """Validate the whole upload, then keep it as the user's ready file (or drop it for the one they have)."""
        try:
            if upload.size == 0:
                raise InvalidAudio("the audio part is empty")
            async with self._validating:
                info = await asyncio.get_running_loop().run_in_executor(
                    None, validate_file, upload.format, upload.writer.temp
                )
        except AudioError as e:
            upload.discard()
            raise InvalidAudio(audio_problem(upload.format, e)) from None
        except BaseException:
            upload.discard()
            raise
        upload.done = True  # from here the writer's file is committed or removed below, never left behind
        try:
            await upload.writer.commit()
        except OSError as e:
            upload.writer.discard()
            raise _storage_error(e) or e from None
        now = self._clock.now()
        try:
            claim = await self._db.import_file(
                user_id,
                speech.new_file(),
                upload.file_id,
                upload.writer.size,
                upload.writer.sha256,
                now,
                self._settings.retention,
                self._limits(),
            )
        except LimitReached as e:
            await self._blobs.remove(upload.file_id, upload.format)
            raise quota_error(e, 0, now) from None
        except BaseException:
            await self._blobs.remove(upload.file_id, upload.format)  # no audio without the row that names it
            raise
        if not claim.created:  # the user had it already (or another import won a race): keep theirs
            await self._blobs.remove(upload.file_id, upload.format)
        if claim.replaced is not None:
            await self._blobs.remove(claim.replaced.id, claim.replaced.format)
        return Imported(claim.row, claim.created, info, claim.replaced)

    async def import_path(self, user_id: str, speech: SpeechRequest, path: Path) -> Imported:
        """A file on disk (the CLI): unread when the user has this audio already, refused unread when too large."""
        row = await self.existing(user_id, speech.content_hash)
        if row is not None:
            return Imported(row, False, None)
        size = (await asyncio.to_thread(path.stat)).st_size
        if size > self.max_size:
            raise AudioTooLarge(
                f"{format_size(size)} is larger than this server's import limit of {format_size(self.max_size)} "
                "(max_import_size)"
            )
        upload = self.upload(speech.format)
        try:
            await asyncio.to_thread(_copy, path, upload)
        except BaseException:
            upload.discard()
            raise
        return await self.store(user_id, speech, upload)


def _copy(path: Path, upload: Upload) -> None:
    with path.open("rb") as source:
        while block := source.read(READ_BLOCK):
            upload.write(block)
