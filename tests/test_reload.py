"""SIGHUP on the real `speccyd serve` process: limits and logging reload, connections stay up; JSON logs."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually, sign_in, wait_status
from tests.fake_upstream import FakeUpstream
from tests.server_process import ServerProcess, start_server

pytestmark = pytest.mark.process


@pytest.fixture
async def served(tmp_path: Path, upstream_url: str) -> AsyncIterator[ServerProcess]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "config.toml").write_text('log_format = "json"\ndaily_char_quota = 10\n')
    server = await start_server(data, upstream_url, tmp_path / "serve.log")
    try:
        yield server
    finally:
        await server.stop()


async def test_sighup_reloads_limits_and_log_level_without_dropping_connections(
    served: ServerProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    """SIGHUP applies a new quota and log level while a download on an open connection completes intact."""
    # More than the socket buffers hold, so the download is still going on during the reload.
    fake.audio_size = 16 * 1024 * 1024
    async with aiohttp.ClientSession(base_url=served.url) as session:
        headers = await sign_in(session)
        async with session.post("/tts/generate", json={"text": "short"}, headers=headers) as response:
            first = await response.json()
        async with session.post("/tts/generate", json={"text": "far more than ten"}, headers=headers) as response:
            assert response.status == 429
            assert (await response.json())["error"]["code"] == "quota_exceeded"
        await wait_status(session, headers, first["content_hash"])
        expected = FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)

        async with session.get(f"/files/{first['file_id']}", headers=headers) as download:
            received = await download.content.readexactly(64 * 1024)
            (tmp_path / "data" / "config.toml").write_text(
                'log_format = "json"\nlog_level = "debug"\ndaily_char_quota = 0\n'
            )
            served.process.send_signal(signal.SIGHUP)
            await eventually(lambda: "SIGHUP: reloaded" in served.log, what="the reload log line")
            received += await download.content.read()
        assert received == expected

        async with session.post("/tts/generate", json={"text": "far more than ten"}, headers=headers) as response:
            assert response.status == 202
    lines = served.log.splitlines()
    reload_line = next(line for line in lines if "SIGHUP: reloaded" in line)
    assert "log_level=debug" in reload_line and "daily_char_quota=0" in reload_line
    # Every line the server wrote is one JSON object (log_format = "json").
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()


async def test_sighup_with_a_broken_config_keeps_running(served: ServerProcess, tmp_path: Path) -> None:
    """A config.toml that no longer parses is reported on SIGHUP and the old settings stay in force."""
    (tmp_path / "data" / "config.toml").write_text("daily_char_quota = 'lots'\n")
    served.process.send_signal(signal.SIGHUP)
    await eventually(lambda: "configuration not reloaded" in served.log, what="the error")
    async with aiohttp.ClientSession(base_url=served.url) as session, session.get("/healthz") as response:
        assert response.status == 200
