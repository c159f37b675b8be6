"""The real `speccyd serve` process: JSON logs, and SIGHUP reloading limits without dropping connections."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.process

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class Served:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode().rstrip("\n"))

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.fixture
async def served(tmp_path: Path, upstream_url: str) -> AsyncIterator[Served]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "config.toml").write_text('log_format = "json"\ndaily_char_quota = 10\n')
    env = {
        **os.environ,
        "SPECCY_OPENAI_BASE_URL": upstream_url,
        "SPECCY_MDNS": "off",
        "SPECCY_RETRY_BACKOFF": "10ms",
    }
    env.pop("SPECCY_DATA_DIR", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "speccyd", "serve", "--data-dir", str(data), "--host", "127.0.0.1", "--port", "0",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    server = Served(process)
    reader = asyncio.create_task(server.read_stderr())
    try:

        async def listening() -> bool:
            for line in server.lines:
                match = LISTENING.search(line)
                if match:
                    server.url = f"http://127.0.0.1:{match.group(1)}"
                    return True
            if process.returncode is not None:
                raise AssertionError("speccyd serve exited:\n" + "\n".join(server.lines))
            return False

        await eventually(listening, timeout=30, what="speccyd serve to listen")
        yield server
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(reader, 10)


async def test_sighup_reloads_limits_and_log_level_without_dropping_connections(
    served: Served, fake: FakeUpstream, tmp_path: Path
) -> None:
    """SIGHUP applies a new quota and log level while a download on an open connection completes intact."""
    fake.audio_size = (
        16 * 1024 * 1024
    )  # more than socket buffers hold, so the download is still going during the reload
    async with aiohttp.ClientSession(base_url=served.url) as session:
        async with session.post("/auth/verify", json={"openai_token": "sk-test-alice"}) as response:
            headers = {"Authorization": f"Bearer {(await response.json())['session_token']}"}
        async with session.post("/tts/generate", json={"text": "short"}, headers=headers) as response:
            first = await response.json()
        async with session.post("/tts/generate", json={"text": "far more than ten"}, headers=headers) as response:
            assert response.status == 429
            assert (await response.json())["error"]["code"] == "quota_exceeded"

        async def ready() -> bool:
            async with session.get(f"/tts/{first['content_hash']}/status", headers=headers) as response:
                return bool((await response.json())["status"] == "ready")

        await eventually(ready, what="the first file")
        expected = FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)

        async with session.get(f"/files/{first['file_id']}", headers=headers) as download:
            received = await download.content.readexactly(64 * 1024)
            (tmp_path / "data" / "config.toml").write_text(
                'log_format = "json"\nlog_level = "debug"\ndaily_char_quota = 0\n'
            )
            served.process.send_signal(signal.SIGHUP)
            await eventually(lambda: asyncio.sleep(0, served.logged("SIGHUP: reloaded")), what="the reload log line")
            received += await download.content.read()
        assert received == expected

        async with session.post("/tts/generate", json={"text": "far more than ten"}, headers=headers) as response:
            assert response.status == 202
    reload_line = next(line for line in served.lines if "SIGHUP: reloaded" in line)
    assert "log_level=debug" in reload_line and "daily_char_quota=0" in reload_line
    # Every line the server wrote is one JSON object (log_format = "json").
    for line in served.lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()


async def test_sighup_with_a_broken_config_keeps_running(served: Served, tmp_path: Path) -> None:
    """A config.toml that no longer parses is reported on SIGHUP and the old settings stay in force."""
    (tmp_path / "data" / "config.toml").write_text("daily_char_quota = 'lots'\n")
    served.process.send_signal(signal.SIGHUP)
    await eventually(lambda: asyncio.sleep(0, served.logged("configuration not reloaded")), what="the error")
    async with aiohttp.ClientSession(base_url=served.url) as session, session.get("/healthz") as response:
        assert response.status == 200
