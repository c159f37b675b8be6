"""The single-file executable built by PyInstaller from packaging/speccyd.spec, run for real.

The build takes minutes, so it happens once per source state: the binary is cached under .cache/ by a hash
of everything that goes into it, and a session whose sources are unchanged reuses it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream
from tests.server_process import LOOPBACK_MDNS, ServerProcess, clean_env

pytestmark = pytest.mark.binary

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"


def source_hash() -> str:
    import PyInstaller

    digest = hashlib.sha256(f"{sys.version} {PyInstaller.__version__}".encode())
    files = sorted([*(ROOT / "speccyd").rglob("*.py"), *(ROOT / "packaging").iterdir(), ROOT / "pyproject.toml"])
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def speccyd_binary() -> Path:
    target = CACHE / "binary" / source_hash()
    binary = target / "speccyd"
    if binary.is_file():
        return binary
    for old in (CACHE / "binary").glob("*"):  # binaries of earlier sources: 28 MB each
        shutil.rmtree(old)
    started = time.monotonic()
    log = CACHE / "pyinstaller.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
             "--distpath", str(target), "--workpath", str(CACHE / "pyinstaller-work"),
             str(ROOT / "packaging" / "speccyd.spec")],
            stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False, cwd=ROOT,
        )  # fmt: skip
    assert result.returncode == 0, log.read_text()[-4000:]
    print(f"built {binary} in {time.monotonic() - started:.0f}s ({binary.stat().st_size / 1e6:.1f} MB)")
    return binary


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )


def test_binary_version_and_init(speccyd_binary: Path, tmp_path: Path) -> None:
    """The binary prints its version and initialises a data dir, with nothing but itself installed."""
    from speccyd import __version__

    result = run(speccyd_binary, "--version")
    assert result.stdout.strip() == f"speccyd {__version__}"
    result = run(speccyd_binary, "init", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "speccyd.db").is_file()


async def test_binary_serves_generates_and_stops(
    speccyd_binary: Path, tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """The binary serves on loopback, announces on mDNS, generates and serves audio, and exits 0 on SIGTERM."""
    data_dir = tmp_path / "data"
    assert run(speccyd_binary, "init", "--data-dir", str(data_dir)).returncode == 0
    binary = [str(speccyd_binary)]
    async with ServerProcess(data_dir, upstream_url, tmp_path / "log", env=LOOPBACK_MDNS, executable=binary) as server:
        await server.start()
        async with aiohttp.ClientSession(base_url=server.url) as http:
            async with http.get("/healthz") as response:
                assert response.status == 200
            headers = await sign_in(http, "sk-test-binary")
            status, job = await generate(http, headers, text="Frozen.")
            assert status == 202
            await wait_status(http, headers, job["content_hash"])
            async with http.get(f"/files/{job['file_id']}", headers=headers) as response:
                assert response.status == 200
                assert await response.read() == FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)

        # zeroconf's compiled modules work frozen: the announcement is registered.
        await eventually(lambda: "announcing" in server.log, what="the mDNS announcement")
        assert await server.stop() == 0
    assert "Traceback" not in server.log
