"""A full disk: generation fails cleanly with storage_full, stored audio is still served, and space returning heals.

The server runs in a mount namespace of its own (`unshare -m`) with its data dir on a 4 MiB tmpfs, so the
test fills a real filesystem without touching the machine's; the test sees that filesystem through
/proc/<pid>/root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import sign_in, wait_status
from tests.fake_upstream import FakeUpstream
from tests.invariants import check_data_dir, temp_files
from tests.server_process import ServerProcess

pytestmark = pytest.mark.process

_MOUNT = 'mount -t tmpfs -o size=4m,mode=0700 speccyd-test "$0" && exec "$@"'
# Left free for SQLite's WAL, so only audio (100 KB) cannot fit: a claim and a failure take about 70 KB of
# WAL between them (the usage row, written when the text goes upstream, with its three indexes).
HEADROOM = 96 * 1024


def _namespace_reason() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m t /mnt"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.decode().strip()}"
    return None


async def test_disk_full_fails_with_storage_full_and_recovers(
    tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """ENOSPC while writing audio: a clean storage_full failure, no temp file, old audio served, then recovery."""
    reason = _namespace_reason()
    if reason is not None:
        pytest.skip(reason)
    fake.audio_size = 100_000
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT, str(data_dir)]
    # min_free_disk below the tmpfs' size, so /healthz is healthy until the ballast fills it.
    env = {"SPECCY_MIN_FREE_DISK": "64KB"}
    server = ServerProcess(data_dir, upstream_url, tmp_path / "server.log", env=env, prefix=prefix)
    await server.start()
    try:
        seen = server.path(data_dir)  # the tmpfs, as the server sees it
        async with aiohttp.ClientSession(base_url=server.url) as http:
            headers = await sign_in(http, "sk-test-disk")

            async def generate(text: str) -> dict[str, Any]:
                async with http.post("/tts/generate", json={"text": text}, headers=headers) as r:
                    assert r.status == 202
                    body: dict[str, Any] = await r.json()
                    return body

            kept = await generate("Stored before the disk filled up.")
            await wait_status(http, headers, kept["content_hash"], "ready")
            async with http.get(f"/files/{kept['file_id']}", headers=headers) as r:
                kept_audio = await r.read()

            ballast = seen / "ballast"
            stat = os.statvfs(seen)
            ballast.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - HEADROOM))

            new = await generate("This audio has nowhere to go.")
            failed = await wait_status(http, headers, new["content_hash"], "failed")
            assert failed["error_code"] == "storage_full" and "disk is full" in failed["error"]
            assert len([c for c in fake.speech_calls if c.body and "nowhere" in c.body["input"]]) == 1
            assert not temp_files(seen)
            ballast_size = ballast.stat().st_size
            ballast.unlink()  # check_data_dir reads through the same filesystem; keep it out of the audio dir
            check_data_dir(seen)
            ballast.write_bytes(b"\0" * ballast_size)

            async with http.get(f"/files/{kept['file_id']}", headers=headers) as r:
                assert r.status == 200
                assert await r.read() == kept_audio
            async with http.get("/healthz") as r:
                # Serving goes on, and the health check says exactly what is wrong: the disk, nothing else.
                health = await r.json()
                assert r.status == 503
                assert [name for name, check in health["checks"].items() if check["ok"] is False] == ["disk"]
            async with http.get(f"/files/{new['file_id']}", headers=headers) as r:
                assert r.status == 410

            # Not one byte left: whether SQLite still finds room in its WAL or not, the answer is a clean
            # storage_full (507 at once, or a failed generation), never a 500.
            stat = os.statvfs(seen)
            with (seen / "ballast2").open("wb") as f:
                f.write(b"\0" * (stat.f_bavail * stat.f_frsize))
            async with http.post("/tts/generate", json={"text": "Totally full."}, headers=headers) as r:
                full: dict[str, Any] = await r.json()
                if r.status == 507:
                    assert full["error"]["code"] == "storage_full"
                else:
                    assert r.status == 202
                    failed = await wait_status(http, headers, full["content_hash"], "failed")
                    assert failed["error_code"] == "storage_full" and "disk is full" in failed["error"]
            async with http.get(f"/files/{kept['file_id']}", headers=headers) as r:
                assert r.status == 200
                assert await r.read() == kept_audio
            (seen / "ballast2").unlink()

            ballast.unlink()  # space returns
            again = await generate("This audio has nowhere to go.")
            await wait_status(http, headers, again["content_hash"], "ready")
            async with http.get("/healthz") as r:
                assert r.status == 200
            async with http.get(f"/files/{again['file_id']}", headers=headers) as r:
                assert r.status == 200
                assert len(await r.read()) == fake.audio_size
            check_data_dir(seen)
    finally:
        await server.kill(signal.SIGTERM)
