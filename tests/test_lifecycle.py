"""Expiry, the cleanup task, usage figures, and recovery of work interrupted by a shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from speccyd.app import create_app
from speccyd.config.settings import Settings
from tests.clock import FakeClock
from tests.conftest import AppClient, app_server, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream


async def test_audio_expires_after_retention(make_client: Any, settings: Settings, clock: FakeClock) -> None:
    """Once the retention has passed, the cleanup task deletes the file and row; status is then 404."""
    client = await make_client(clock, retention="1h", cleanup_interval="200ms")
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    await wait_status(client, headers, body["content_hash"])
    path = next(settings.audio_dir.glob(f"*/{body['file_id']}.mp3"))
    clock.advance(3599)
    assert (await client.get(f"/files/{body['file_id']}", headers=headers)).status == 200  # not a second early
    clock.advance(2)

    await eventually(lambda: not path.exists(), timeout=15, what="expired audio to be deleted")
    response = await client.get(f"/tts/{body['content_hash']}/status", headers=headers)
    assert response.status == 404
    assert (await client.get(f"/files/{body['file_id']}", headers=headers)).status == 404


async def test_expired_content_is_generated_again(make_client: Any, fake: FakeUpstream, clock: FakeClock) -> None:
    """A request for content whose audio expired (410 meanwhile) starts a new generation."""
    client = await make_client(clock, retention="1h", cleanup_interval="1h")
    headers = await sign_in(client)
    _, first = await generate(client, headers)
    await wait_status(client, headers, first["content_hash"])
    clock.advance(3601)
    assert (await client.get(f"/files/{first['file_id']}", headers=headers)).status == 410
    status, second = await generate(client, headers)
    assert status == 202
    assert second["file_id"] != first["file_id"]
    await wait_status(client, headers, second["content_hash"])
    assert len(fake.speech_calls) == 2


async def test_usage_counts_generations_and_cleanup(client: AppClient) -> None:
    """/user/usage reports files, storage, today's generations and characters, and the last cleanup."""
    headers = await sign_in(client)
    for text in ("first text", "second one"):
        _, body = await generate(client, headers, text=text)
        await wait_status(client, headers, body["content_hash"])
    await generate(client, headers, text="first text")  # a cache hit is not a generation
    usage = await (await client.get("/user/usage", headers=headers)).json()
    assert usage["files_count"] == 2
    assert usage["storage_used_mb"] == 0.008
    assert usage["generated_today"] == 2
    assert usage["characters_today"] == len("first text") + len("second one")
    assert usage["last_cleanup"].endswith("Z")
    other = await sign_in(client, "sk-test-other")
    usage = await (await client.get("/user/usage", headers=other)).json()
    assert (usage["files_count"], usage["generated_today"]) == (0, 0)


async def test_interrupted_generation_resumes_after_restart(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    settings: Settings,
    fake: FakeUpstream,
) -> None:
    """A generation cut off by shutdown is resumed at the next start and completes."""
    first = await aiohttp_client(app_server(create_app(settings)))
    headers = await sign_in(first)
    fake.gate.clear()
    _, body = await generate(first, headers)
    await eventually(lambda: len(fake.speech_calls) == 1, what="the upstream call")
    await first.close()  # the app's cleanup cancels the job; the row stays 'generating'
    fake.gate.set()
    second = await aiohttp_client(app_server(create_app(settings)))
    ready = await wait_status(second, headers, body["content_hash"])
    assert ready["file_id"] == body["file_id"]
    assert len(fake.speech_calls) == 2
    assert [p.name for p in (settings.audio_dir / "tmp").iterdir()] == []
