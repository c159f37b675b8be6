"""The real `speccyd serve` process: first run, signals, crash recovery, and the CLI beside a running server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually
from tests.fake_upstream import FakeUpstream
from tests.server_process import SPECCYD, ServerProcess, run_cli, speccyd_env, start_server

pytestmark = pytest.mark.process


class Api:
    """A minimal client of a running speccyd."""

    def __init__(self, session: aiohttp.ClientSession, server: ServerProcess) -> None:
        self.session = session
        self.url = server.url
        self.headers: dict[str, str] = {}

    async def sign_in(self, key: str = "sk-test-alice") -> None:
        async with self.session.post(f"{self.url}/auth/verify", json={"openai_token": key}) as r:
            assert r.status == 200
            self.headers = {"Authorization": f"Bearer {(await r.json())['session_token']}"}

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.url}{path}", headers=self.headers, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.read()
            return r.status, body

    async def wait_status(self, content_hash: str, wanted: str = "ready") -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            status, body = await self.call("GET", f"/tts/{content_hash}/status")
            return body if status == 200 and body["status"] == wanted else None

        result: dict[str, Any] = await eventually(check, timeout=20, what=f"status {wanted}")
        return result


async def test_first_run_serves_and_sigterm_exits_0(tmp_path: Path, upstream_url: str) -> None:
    """`serve` on a new data dir creates it, answers /healthz, and exits 0 on SIGTERM."""
    data = tmp_path / "data"
    server = await start_server(data, upstream_url, tmp_path / "log")
    assert (data / "speccyd.db").exists()
    assert (data / "secrets" / "session.key").exists()
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    assert await server.stop(signal.SIGTERM) == 0
    assert "stopped" in server.log


async def test_sigint_exits_0(tmp_path: Path, upstream_url: str) -> None:
    """Ctrl-C (SIGINT) is a clean shutdown too."""
    server = await start_server(tmp_path / "data", upstream_url, tmp_path / "log")
    assert await server.stop(signal.SIGINT) == 0


async def test_sigterm_with_generation_in_flight(tmp_path: Path, upstream_url: str, fake: FakeUpstream) -> None:
    """SIGTERM while a generation waits on the upstream exits 0; the next start finishes the job."""
    data = tmp_path / "data"
    server = await start_server(data, upstream_url, tmp_path / "log")
    fake.gate.clear()
    async with aiohttp.ClientSession() as session:
        api = Api(session, server)
        await api.sign_in()
        _, body = await api.call("POST", "/tts/generate", json={"text": "in flight"})
        await eventually(lambda: len(fake.speech_calls) >= 1, what="the upstream call")
        assert await server.stop(signal.SIGTERM) == 0
        fake.gate.set()
        server = await start_server(data, upstream_url, tmp_path / "log")
        api.url = server.url
        ready = await api.wait_status(body["content_hash"])
        assert ready["file_id"] == body["file_id"]
    assert await server.stop() == 0


async def test_sigkill_mid_generation_then_restart(tmp_path: Path, upstream_url: str, fake: FakeUpstream) -> None:
    """After SIGKILL mid-generation, a restart leaves nothing stuck: the job resumes and completes."""
    data = tmp_path / "data"
    fake.chunk_delay = 0.05  # the kill lands while audio is being written to the temp file
    fake.audio_size = 20_000
    server = await start_server(data, upstream_url, tmp_path / "log")
    async with aiohttp.ClientSession() as session:
        api = Api(session, server)
        await api.sign_in()
        _, body = await api.call("POST", "/tts/generate", json={"text": "killed"})
        await eventually(lambda: _temp_file_exists(data), what="a partial temp file")
        assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
        fake.chunk_delay = 0
        server = await start_server(data, upstream_url, tmp_path / "log")
        api.url = server.url
        ready = await api.wait_status(body["content_hash"])
        status, audio = await api.call("GET", f"/files/{ready['file_id']}")
        assert (status, len(audio)) == (200, 20_000)
        assert list((data / "audio" / "tmp").iterdir()) == []
    assert await server.stop() == 0


async def test_usage_and_purge_while_serving(tmp_path: Path, upstream_url: str) -> None:
    """usage and purge work beside a running server; purged audio is never served afterwards."""
    data = tmp_path / "data"
    server = await start_server(data, upstream_url, tmp_path / "log")
    async with aiohttp.ClientSession() as session:
        api = Api(session, server)
        await api.sign_in()
        ready = []
        for i in range(3):
            _, body = await api.call("POST", "/tts/generate", json={"text": f"doc {i}"})
            ready.append(await api.wait_status(body["content_hash"]))
        usage = await asyncio.to_thread(run_cli, "usage", "--json", data_dir=data)
        assert usage.returncode == 0, usage.stderr
        assert '"files": 3' in usage.stdout
        purge = await asyncio.to_thread(run_cli, "purge", "--all", "--yes", data_dir=data)
        assert purge.returncode == 0, purge.stderr
        assert "removed 3 files" in purge.stdout
        for row in ready:
            status, body = await api.call("GET", f"/files/{row['file_id']}")
            assert status == 404
            assert body["error"]["code"] == "not_found"
        assert list((data / "audio").glob("*/*.mp3")) == []
        status, usage_now = await api.call("GET", "/user/usage")
        assert usage_now["files_count"] == 0
        # The server remembered these files as ready; it must notice they are gone and generate anew.
        status, again = await api.call("POST", "/tts/generate", json={"text": "doc 0"})
        assert status == 202
        assert again["file_id"] != ready[0]["file_id"]
        await api.wait_status(again["content_hash"])
    assert await server.stop() == 0


async def test_log_has_no_secrets(tmp_path: Path, upstream_url: str) -> None:
    """The server's log carries no API key, session token or URL signature."""
    server = await start_server(tmp_path / "data", upstream_url, tmp_path / "log", SPECCY_LOG_LEVEL="debug")
    async with aiohttp.ClientSession() as session:
        api = Api(session, server)
        await api.sign_in("sk-test-needle-key")
        await api.call("POST", "/auth/verify", json={"openai_token": "sk-wrong-needle"})
        _, body = await api.call("POST", "/tts/generate", json={"text": "log check"})
        ready = await api.wait_status(body["content_hash"])
        async with session.get(f"{server.url}{ready['url']}") as response:
            assert response.status == 200
    assert await server.stop() == 0
    log = server.log
    token = api.headers["Authorization"].split()[1]
    signature = ready["url"].split("sig=")[1]
    for secret in ("sk-test-needle-key", "sk-wrong-needle", token, signature):
        assert secret not in log
    assert f"GET /files/{ready['file_id']} 200" in log


def _temp_file_exists(data: Path) -> bool:
    tmp = data / "audio" / "tmp"
    return tmp.exists() and any(p.stat().st_size > 0 for p in tmp.iterdir())


async def test_healthcheck_command_and_quiet_health_probes(tmp_path: Path, upstream_url: str) -> None:
    """`speccyd healthcheck` finds the server from the settings and exits 0; a healthy probe is not in the access log
    (a failing one and every other request are), and a server with a failing check makes it exit 1."""
    data = tmp_path / "data"
    server = await start_server(data, upstream_url, tmp_path / "log")

    def healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SPECCYD), "healthcheck", "--data-dir", str(data), *args],
            env={**speccyd_env(upstream_url), **env}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    ok = await asyncio.to_thread(healthcheck, SPECCY_HOST="0.0.0.0", SPECCY_PORT=str(server.port))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith('200 {"status": "ok"')
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{server.url}/healthz") as response:
                assert response.status == 200
        async with session.get(f"{server.url}/openapi.json") as response:
            assert response.status == 200
    refused = await asyncio.to_thread(healthcheck, "--url", "http://127.0.0.1:9/healthz", "--timeout", "2")
    assert refused.returncode == 1
    assert "http://127.0.0.1:9/healthz:" in refused.stdout
    assert await server.stop() == 0
    await eventually(lambda: "GET /openapi.json 200" in server.log, what="the access log line")
    assert "/healthz" not in server.log

    failing = await start_server(data, upstream_url, tmp_path / "log2", SPECCY_MIN_FREE_DISK="1000TB")
    sick = await asyncio.to_thread(healthcheck, "--url", f"{failing.url}/healthz")
    assert sick.returncode == 1
    assert sick.stdout.startswith("503 ") and "min_free_disk" in sick.stdout
    assert await failing.stop() == 0
    assert "GET /healthz 503" in failing.log


# --- rotating the secrets of a running server (issue 11) ---


async def test_init_force_is_refused_while_a_server_serves_the_data_dir(tmp_path: Path, upstream_url: str) -> None:
    """`init --force` against a running server's data dir is refused (naming the server's pid) and changes
    nothing: sessions, signed URLs and user ids stay as they were; once the server stops it rotates."""
    data = tmp_path / "data"
    server = await start_server(data, upstream_url, tmp_path / "server.log")
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, server)
            await api.sign_in()
            _, file = await api.call("POST", "/tts/generate", json={"text": "Signed before."})
            file = await api.wait_status(file["content_hash"])
            secrets_before = {p.name: p.read_bytes() for p in (data / "secrets").iterdir()}
            refused = await asyncio.to_thread(run_cli, "init", "--force", "--yes", data_dir=data)
            assert refused.returncode == 1, refused.stdout
            assert f"pid {server.process.pid}" in refused.stderr and "stop it first" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
            assert {p.name: p.read_bytes() for p in (data / "secrets").iterdir()} == secrets_before
            assert (await api.call("GET", "/user/usage"))[0] == 200
            async with session.get(f"{server.url}{file['url']}") as r:
                assert r.status == 200
            user_id = (await api.call("POST", "/auth/verify", json={"openai_token": "sk-test-alice"}))[1]["user_id"]
        assert await server.stop() == 0
        rotated = await asyncio.to_thread(run_cli, "init", "--force", "--yes", data_dir=data)
        assert rotated.returncode == 0, rotated.stderr
        await server.start()
        async with aiohttp.ClientSession() as session:
            api = Api(session, server)
            await api.sign_in()
            assert (await api.call("POST", "/auth/verify", json={"openai_token": "sk-test-alice"}))[1]["user_id"] == (
                user_id
            )
            async with session.get(f"{server.url}{file['url']}") as r:
                assert r.status == 401  # the old signed URL ended with the old secrets
    finally:
        await server.kill(signal.SIGTERM)


async def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path, upstream_url: str) -> None:
    """A second `serve` on a data dir that a server uses exits 1 with one line naming the first; a killed
    server leaves no lock behind."""
    data = tmp_path / "data"
    first = await start_server(data, upstream_url, tmp_path / "first.log")
    try:
        second = ServerProcess(data, upstream_url, tmp_path / "second.log")
        with pytest.raises(AssertionError, match="exited with 1"):
            await second.start(timeout=30)
        assert f"pid {first.process.pid}" in second.log and "Traceback" not in second.log
        assert [line for line in second.log.splitlines() if line.startswith("error:")] == [
            line for line in second.log.splitlines() if line.strip() and "speccyd.access" not in line
        ][-1:]
    finally:
        await first.kill()  # SIGKILL: the kernel drops the lock with the process
    again = await asyncio.to_thread(run_cli, "init", "--force", "--yes", data_dir=data)
    assert again.returncode == 0, again.stderr
