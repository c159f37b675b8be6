"""Rows and audio written straight into a data dir's database and blob store, as a real server leaves them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from speccyd.config.settings import Settings
from speccyd.storage.blobs import BlobStore, open_blobs
from speccyd.storage.database import Database, open_database
from speccyd.storage.records import FileRow, NewFile

T = TypeVar("T")


def new_file(n: int, fmt: str = "mp3") -> NewFile:
    return NewFile(f"{n:064x}", "tts-1", "alloy", fmt, 1.0, None, f"text {n}")


async def add_ready(
    db: Database, blobs: BlobStore, user_id: str, new: NewFile, now: float, retention: float, audio: bytes
) -> FileRow:
    """A generation claimed, its audio committed and the row marked ready, in that order."""
    row = (await db.claim(user_id, new, now, retention)).row
    writer = blobs.writer(row.id, new.format)
    writer.write(audio)
    await writer.commit()
    await db.mark_ready(row.id, writer.size, writer.sha256, now, retention)
    return row


def with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` on the data dir's database from synchronous test code (CLI tests run no event loop)."""

    async def run() -> T:
        db = open_database(settings)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def seed(settings: Settings, files: int, *, expired: int = 0, now: float, retention: float = 100.0) -> str:
    """One user and `files` ready audio files of 1,000 bytes, the first `expired` of them past their expiry."""

    async def work(db: Database) -> str:
        user = await db.upsert_user("hash", lambda uid: b"enc", now)
        blobs = open_blobs(settings)
        for i in range(files):
            at = now - (10_000 if i < expired else 0)
            await add_ready(db, blobs, user, new_file(i), at, retention, b"x" * 1000)
        return user

    return with_db(settings, work)


def ready_ids(settings: Settings) -> set[str]:
    return with_db(settings, lambda db: db.ready_ids())
