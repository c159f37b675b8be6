"""`speccyd backup` while the server runs, and `speccyd restore` into an empty data dir."""

from __future__ import annotations

import asyncio
import json
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from typer.testing import CliRunner

from speccyd.app import create_app
from speccyd.cli import app as cli
from speccyd.config.settings import load_settings
from tests.conftest import TEST_OVERRIDES, AppClient, app_server, generate, invoke, sign_in, wait_status

MakeClient = Callable[..., Awaitable[AppClient]]


async def fill(client: AppClient, headers: dict[str, str], count: int, prefix: str = "backed up") -> dict[str, bytes]:
    """`count` ready files: file id -> the bytes the server serves for it."""
    served = {}
    for n in range(count):
        _, first = await generate(client, headers, text=f"{prefix} {n}")
        ready = await wait_status(client, headers, first["content_hash"])
        response = await client.get(f"/files/{ready['file_id']}", headers=headers)
        served[ready["file_id"]] = await response.read()
    return served


async def cli_ok(*args: str) -> str:
    result = await invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


async def restored_client(aiohttp_client: Any, restored: Path, upstream_url: str) -> AppClient:
    settings = load_settings(restored, {**TEST_OVERRIDES, "openai_base_url": upstream_url}, env={})
    client: AppClient = await aiohttp_client(app_server(create_app(settings)))
    return client


@pytest.mark.parametrize("dest_name", ["snapshot", "snapshot.tar.gz"])
async def test_restored_server_serves_every_ready_file_with_the_same_sessions(
    client: AppClient,
    data_dir: Path,
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    upstream_url: str,
    dest_name: str,
) -> None:
    """A backup taken while serving, restored elsewhere, serves the same bytes to the same session token."""
    headers = await sign_in(client)
    served = await fill(client, headers, 3)
    dest = tmp_path / "backups" / dest_name
    # The backup runs on another thread while the server keeps generating and writing.
    busy = asyncio.create_task(fill(client, headers, 5, prefix="during the backup"))
    out = await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    during = await busy
    assert "backed up" in out
    later = await fill(client, headers, 1, prefix="made later")

    restored = tmp_path / "restored"
    assert "restored" in await cli_ok("restore", str(dest), "--data-dir", str(restored))
    other = await restored_client(aiohttp_client, restored, upstream_url)
    for file_id, body in served.items():
        response = await other.get(f"/files/{file_id}", headers=headers)
        assert response.status == 200
        assert await response.read() == body
    for file_id, body in during.items():  # in the snapshot or not, but never a row without its audio
        response = await other.get(f"/files/{file_id}", headers=headers)
        assert response.status in (200, 202, 404)
        if response.status == 200:
            assert await response.read() == body
    (later_id,) = later
    assert (await other.get(f"/files/{later_id}", headers=headers)).status == 404
    usage = await (await other.get("/user/usage", headers=headers)).json()
    assert 3 <= usage["files_count"] <= 8


async def test_backup_without_secrets_holds_no_secrets(client: AppClient, data_dir: Path, tmp_path: Path) -> None:
    """--no-secrets leaves the secrets dir out of the archive and the manifest says so."""
    headers = await sign_in(client)
    await fill(client, headers, 1)
    dest = tmp_path / "b.tar.gz"
    await cli_ok("backup", str(dest), "--no-secrets", "--data-dir", str(data_dir))
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert not [n for n in names if n.startswith("secrets")]
    assert manifest["secrets"] is False and manifest["files"] == 1
    assert dest.stat().st_mode & 0o077 == 0


async def test_restore_refuses_a_damaged_backup(client: AppClient, data_dir: Path, tmp_path: Path) -> None:
    """An audio file that does not match its checksum fails the integrity check and nothing is restored."""
    headers = await sign_in(client)
    await fill(client, headers, 2)
    dest = tmp_path / "snap"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    victim = next((dest / "audio").glob("*/*.mp3"))
    victim.write_bytes(b"not the audio")
    target = tmp_path / "restored"
    result = await invoke("restore", str(dest), "--data-dir", str(target))
    assert result.exit_code == 1
    assert "does not match its checksum" in result.output
    assert not target.exists()


async def test_restore_refuses_a_damaged_database(client: AppClient, data_dir: Path, tmp_path: Path) -> None:
    """A database that differs from the manifest is refused before anything is written."""
    await sign_in(client)
    dest = tmp_path / "snap"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    with (dest / "speccyd.db").open("r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 64)
    result = await invoke("restore", str(dest), "--data-dir", str(tmp_path / "r"))
    assert result.exit_code == 1 and "damaged" in result.output


async def test_restore_only_into_an_empty_data_dir(client: AppClient, data_dir: Path, tmp_path: Path) -> None:
    """Restoring over a data dir that holds anything is refused; backing up into a non-empty dir too."""
    dest = tmp_path / "snap"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    result = await invoke("restore", str(dest), "--data-dir", str(data_dir))
    assert result.exit_code == 1 and "not empty" in result.output
    again = await invoke("backup", str(dest), "--data-dir", str(data_dir))
    assert again.exit_code == 1 and "not an empty directory" in again.output
    missing = await invoke("restore", str(tmp_path / "nope.tar.gz"), "--data-dir", str(tmp_path / "x"))
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    """A directory without a manifest, or a file that is not a tar.gz, is named as not a backup."""
    (tmp_path / "junk").mkdir()
    result = CliRunner().invoke(cli, ["restore", str(tmp_path / "junk"), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "manifest.json" in result.output
    (tmp_path / "junk.tar.gz").write_bytes(b"nope")
    result = CliRunner().invoke(cli, ["restore", str(tmp_path / "junk.tar.gz"), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "not a readable .tar.gz" in result.output


def test_restore_refuses_an_archive_with_links_or_escaping_paths(tmp_path: Path) -> None:
    """A .tar.gz holding a symlink or a path outside the target is refused before anything is extracted."""
    import io

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("secrets")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
        escape = tarfile.TarInfo("../outside.txt")
        escape.size = 2
        tar.addfile(escape, io.BytesIO(b"hi"))
    result = CliRunner().invoke(cli, ["restore", str(archive), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "refusing archive member" in result.output
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "d").exists()
