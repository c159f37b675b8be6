"""Shared fixtures: the fake upstream on 127.0.0.1, test settings in a tmp data dir, and signed-in clients."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from click.testing import Result
from typer.testing import CliRunner

from speccyd.app import create_app
from speccyd.config.clock import SYSTEM_CLOCK, Clock
from speccyd.config.settings import Settings, load_settings
from speccyd.storage.sqlite import SqliteDatabase
from speccyd.storage.sqlite.migrations import MIGRATIONS
from speccyd.web.protocol import SpeccyRunner
from tests.clock import FakeClock
from tests.fake_upstream import CLIP_RATE, FakeUpstream, ffmpeg_available, make_clips

AppClient = TestClient[web.Request, web.Application]
# The in-process test client, or a session with `base_url` talking to a `speccyd serve` process.
Http = AppClient | aiohttp.ClientSession

# Fast retries and no mDNS; everything else at its documented default unless a test says otherwise.
TEST_OVERRIDES: dict[str, object] = {
    "host": "127.0.0.1",
    "mdns": "off",
    "retry_backoff": "10ms",
    "rate_limit": "off",
    "upstream_timeout": "5s",
}


class SpeccyTestServer(TestServer):
    """aiohttp's test server, under speccyd's own runner (its protocol answers as `speccyd serve` does)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return SpeccyRunner(self.app, **kwargs)


def app_server(app: web.Application) -> BaseTestServer:
    return SpeccyTestServer(app, host="127.0.0.1")


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def upstream_url(fake: FakeUpstream, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return str(server.make_url("/v1"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_settings(data_dir: Path, upstream_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values = {**TEST_OVERRIDES, "openai_base_url": upstream_url, **overrides}
        return load_settings(data_dir, values, env={})

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so, starting at the real time (other processes agree)."""
    return FakeClock(time.time())


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[AppClient]], make_settings: Callable[..., Settings]
) -> Callable[..., Awaitable[AppClient]]:
    async def make(clock: Clock = SYSTEM_CLOCK, **overrides: object) -> AppClient:
        return await aiohttp_client(app_server(create_app(make_settings(**overrides), clock)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[AppClient]]) -> AppClient:
    return await make_client()


async def invoke(*args: str, **kwargs: Any) -> Result:
    """`speccyd ARGS` in-process on a worker thread: the CLI runs its own event loop, as it does from a shell."""
    from speccyd.cli import app

    return await asyncio.to_thread(CliRunner().invoke, app, list(args), **kwargs)


async def sign_in(client: Http, key: str = "sk-test-alice") -> dict[str, str]:
    """Authorization headers for a fresh session of the user who owns `key`."""
    response = await client.post("/auth/verify", json={"openai_token": key})
    assert response.status == 200, await response.text()
    body = await response.json()
    return {"Authorization": f"Bearer {body['session_token']}"}


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` (plain or async) until it returns something truthy; fail after `timeout` s, never sleep blindly."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def generate(client: Http, headers: dict[str, str], **body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post("/tts/generate", json={"text": "Hello there.", **body}, headers=headers)
    return response.status, await response.json()


async def wait_status(
    client: Http, headers: dict[str, str], content_hash: str, wanted: str = "ready", timeout: float = 10.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        response = await client.get(f"/tts/{content_hash}/status", headers=headers)
        body: dict[str, Any] = await response.json()
        return body if body.get("status") == wanted else None

    result: dict[str, Any] = await eventually(check, timeout, what=f"status {wanted}")
    return result


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """Real encoded audio for every format, made once per session; skips where ffmpeg is missing."""
    if not ffmpeg_available():
        pytest.skip("ffmpeg/ffprobe not installed (Debian: apt-get install -y ffmpeg); needed to test real audio")
    return make_clips(tmp_path_factory.mktemp("clips"))


@dataclass
class Decoded:
    seconds: float
    errors: str


def decode(data: bytes, fmt: str, directory: Path) -> Decoded:
    """Decode audio with ffmpeg to 24 kHz mono samples: its exact duration, and anything ffmpeg complained of."""
    source = directory / f"decode-{hashlib.sha256(data).hexdigest()[:12]}.{fmt}"
    source.write_bytes(data)
    raw_input = ["-f", "s16le", "-ar", str(CLIP_RATE), "-ac", "1"] if fmt == "pcm" else []
    result = subprocess.run(
        ["ffmpeg", "-v", "error", *raw_input, "-i", str(source), "-f", "s16le", "-ac", "1", "-ar", str(CLIP_RATE), "-"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    errors = result.stderr.decode(errors="replace") + ("" if result.returncode == 0 else f"exit {result.returncode}")
    return Decoded(len(result.stdout) / 2 / CLIP_RATE, errors)


def old_database(path: Path, version: int) -> sqlite3.Connection:
    """An autocommit connection to a new database as release `version` left it: its first `version` migrations."""
    db = sqlite3.connect(path, isolation_level=None)
    for migrate in MIGRATIONS[:version]:
        migrate(db)
    db.execute(f"PRAGMA user_version = {version}")
    return db


@pytest.fixture
async def settings_db(data_dir: Path) -> Any:
    """A second connection to the test server's database, as the CLI would open it (after the app started)."""
    opened: list[SqliteDatabase] = []

    class Lazy:
        def __getattr__(self, name: str) -> Any:
            if not opened:
                opened.append(SqliteDatabase(data_dir / "speccyd.db"))
            return getattr(opened[0], name)

    yield Lazy()
    for db in opened:
        await db.close()
