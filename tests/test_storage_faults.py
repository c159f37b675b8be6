"""The disk or the database refusing a write at the worst moment: no broken audio, nothing lost.

Faults are real: a file where the audio's directory must go, another connection holding SQLite's write
lock past the busy timeout. Nothing in speccyd is patched.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from speccyd.config.settings import Settings
from tests.conftest import eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream


@contextmanager
def write_lock(db_path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as a stuck `speccyd purge` would."""
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_audio_that_cannot_be_committed_fails_the_file_and_leaves_nothing(
    make_client: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """When the finished audio cannot be renamed into place, the file fails as internal_error, no temp file
    is left, and the next request generates it again once the disk is sane."""
    client = await make_client()
    headers = await sign_in(client)
    # A plain file at every audio/xx/ path: the commit's mkdir fails, as on a broken or hostile disk.
    for n in range(256):
        (settings.audio_dir / f"{n:02x}").write_bytes(b"")
    _, body = await generate(client, headers)
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert failed["error_code"] == "internal_error"
    assert list((settings.audio_dir / "tmp").iterdir()) == []
    assert any(r.exc_info and "failed unexpectedly" in r.getMessage() for r in caplog.records)
    for n in range(256):
        (settings.audio_dir / f"{n:02x}").unlink()
    status, again = await generate(client, headers)
    assert status == 202
    assert (await wait_status(client, headers, again["content_hash"]))["status"] == "ready"


async def test_a_row_that_cannot_be_marked_ready_or_failed_is_generated_again_at_the_next_start(
    make_client: Any, settings: Settings, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses to say "ready", then to say "failed": the audio is removed (no file without a
    row that names it), the row stays generating, and the next start finishes it."""
    first = await make_client()
    headers = await sign_in(first)
    fake.gate.clear()
    _, body = await generate(first, headers)
    await eventually(lambda: len(fake.speech_calls) == 1, what="the upstream call")
    with caplog.at_level(logging.ERROR), write_lock(settings.db_path):
        fake.gate.set()

        def gave_up() -> bool:
            return any("cannot record its failure" in r.getMessage() for r in caplog.records)

        # mark_ready and then mark_failed each wait out the 5 s busy timeout.
        await eventually(gave_up, timeout=30, what="the failure to be unrecordable")
        assert list(settings.audio_dir.glob(f"*/{body['file_id']}.*")) == []
    await first.close()
    second = await make_client()
    ready = await wait_status(second, headers, body["content_hash"], timeout=20)
    assert ready["file_id"] == body["file_id"]
    assert len(fake.speech_calls) == 2
