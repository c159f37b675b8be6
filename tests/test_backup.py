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


# --- untrusted backups (issue 11) ---


def _reseal(backup: Path) -> None:
    """Make the manifest match a database edited by a test (as a crafted backup would)."""
    import hashlib

    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["database_sha256"] = hashlib.sha256((backup / "speccyd.db").read_bytes()).hexdigest()
    manifest["database_bytes"] = (backup / "speccyd.db").stat().st_size
    (backup / "manifest.json").write_text(json.dumps(manifest))


SCHEMA_CHANGES = {
    # On every new user, make the newest user the oldest one's twin: sign-ins land in another account.
    "trigger": "CREATE TRIGGER hijack AFTER INSERT ON users BEGIN "
    "UPDATE users SET key_hash = NEW.key_hash || 'x' WHERE id = (SELECT min(id) FROM users); END",
    "view": "CREATE VIEW everything AS SELECT * FROM users",
    "table": "CREATE TABLE extra (x)",
    "index": "CREATE INDEX extra_index ON users(created_at)",
    "changed table": "ALTER TABLE users ADD COLUMN note TEXT",
    "dropped index": "DROP INDEX audio_files_expires",
}


@pytest.mark.parametrize("change", list(SCHEMA_CHANGES), ids=list(SCHEMA_CHANGES))
async def test_restore_refuses_a_schema_speccyd_did_not_make(
    client: AppClient, data_dir: Path, tmp_path: Path, change: str
) -> None:
    """A database with an extra or changed trigger, view, table or index is refused, and nothing is written."""
    import sqlite3

    await fill(client, await sign_in(client), 1)
    dest = tmp_path / "snap"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    with sqlite3.connect(dest / "speccyd.db") as db:
        db.execute(SCHEMA_CHANGES[change])
    db.close()
    _reseal(dest)
    target = tmp_path / "restored"
    result = await invoke("restore", str(dest), "--data-dir", str(target))
    assert result.exit_code == 1, result.output
    assert "does not have speccyd's schema" in result.output
    assert not target.exists()


@pytest.mark.parametrize("linked", ["secrets", "audio", "audio/xx", "config.toml", "manifest.json", "speccyd.db"])
async def test_restore_reads_no_symlink_anywhere(
    client: AppClient, data_dir: Path, tmp_path: Path, linked: str
) -> None:
    """A backup in which a directory (secrets/, audio/, audio/xx) or a file is a symlink is refused."""
    await fill(client, await sign_in(client), 1)
    dest = tmp_path / "snap"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    if linked == "audio/xx":
        linked = str(next((dest / "audio").iterdir()).relative_to(dest))
    real = tmp_path / "elsewhere"
    (dest / linked).rename(real)
    (dest / linked).symlink_to(real)
    result = await invoke("restore", str(dest), "--data-dir", str(tmp_path / "restored"))
    assert result.exit_code == 1, result.output
    assert "is a symbolic link" in result.output
    assert not (tmp_path / "restored").exists()


def _archive(path: Path, members: dict[str, bytes], sizes: dict[str, int] | None = None) -> None:
    """A .tar.gz of `members`; a name in `sizes` gets only a header claiming that size, written first."""
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, size in (sizes or {}).items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info)  # the header alone: a 1 PB claim in a few hundred bytes
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


async def test_restore_refuses_junk_and_oversized_members_before_writing(
    client: AppClient, data_dir: Path, tmp_path: Path
) -> None:
    """Members outside the layout, audio beyond the manifest and members beyond the free disk are refused before
    anything is written."""
    await fill(client, await sign_in(client), 1)
    dest = tmp_path / "snap"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    good = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    audio_name = next(name for name in good if name.startswith("audio/"))
    cases = {
        "junk": ({**good, "junk/payload.bin": b"x" * 1000}, None, "not part of a speccyd backup"),
        "near miss": ({**good, "audio/zz/" + "0" * 32 + ".mp3": b"x"}, None, "not part of a speccyd backup"),
        "beyond the manifest": ({**good, audio_name: good[audio_name] * 50}, None, "more than its manifest states"),
        "beyond the disk": (good, {audio_name: 10**15}, "that could be restored"),
        "twice": ({**good}, None, "appears twice"),
    }
    for name, (members, sizes, message) in cases.items():
        archive = tmp_path / f"{name}.tar.gz"
        _archive(archive, members, sizes)
        if name == "twice":
            with tarfile.open(archive, "w:gz") as tar:
                for member, data in [*members.items(), (audio_name, good[audio_name])]:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, __import__("io").BytesIO(data))
        target = tmp_path / f"restored-{name.replace(' ', '-')}"
        result = await invoke("restore", str(archive), "--data-dir", str(target))
        assert result.exit_code == 1, (name, result.output)
        assert message in result.output, (name, result.output)
        assert not target.exists(), name


async def test_backup_of_an_https_server_keeps_its_certificate(
    data_dir: Path, tmp_path: Path, upstream_url: str
) -> None:
    """A backup of an HTTPS server holds its certificate (and key, with the secrets): the restored server loads
    them from its own data dir and keeps the pinned fingerprint; without secrets only the certificate."""
    from speccyd.security.tls import fingerprint, server_context

    await cli_ok("init", "--tls", "--data-dir", str(data_dir))
    pinned = fingerprint(data_dir / "tls.crt")
    for name, extra in (("with.tar.gz", ()), ("without.tar.gz", ("--no-secrets",))):
        await cli_ok("backup", str(tmp_path / name), *extra, "--data-dir", str(data_dir))
        with tarfile.open(tmp_path / name) as tar:
            names = set(tar.getnames())
        assert "tls.crt" in names and ("tls.key" in names) == (not extra)
    restored = tmp_path / "restored"
    await cli_ok("restore", str(tmp_path / "with.tar.gz"), "--data-dir", str(restored))
    settings = load_settings(restored, {**TEST_OVERRIDES, "openai_base_url": upstream_url}, env={})
    assert settings.tls_cert == restored / "tls.crt" and settings.tls_key == restored / "tls.key"
    assert fingerprint(settings.tls_cert) == pinned
    assert server_context(settings) is not None
    assert (restored / "tls.key").stat().st_mode & 0o077 == 0


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


async def test_backups_are_private_from_the_first_byte_whatever_the_umask(
    client: AppClient, data_dir: Path, tmp_path: Path
) -> None:
    """Under umask 000, a backup directory is 0700 with 0600 files, and an archive is 0600 with such members."""
    import os
    import subprocess
    import sys

    await fill(client, await sign_in(client), 2)
    for dest in (tmp_path / "tree", tmp_path / "snap.tar.gz"):
        done = subprocess.run(
            [sys.executable, "-m", "speccyd", "backup", str(dest), "--data-dir", str(data_dir)],
            preexec_fn=lambda: os.umask(0),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert _modes(tmp_path / "tree") == {("dir", 0o700), ("file", 0o600)}
    assert (tmp_path / "snap.tar.gz").stat().st_mode & 0o777 == 0o600
    with tarfile.open(tmp_path / "snap.tar.gz") as tar:
        assert {(m.isdir(), m.mode & 0o777) for m in tar.getmembers()} == {(True, 0o700), (False, 0o600)}


async def test_backup_refuses_a_name_with_an_unknown_suffix(data_dir: Path, tmp_path: Path) -> None:
    """`backup x.zip` (or .tar, .bak) is refused instead of becoming a directory named x.zip."""
    await cli_ok("init", "--data-dir", str(data_dir))
    for name in ("x.zip", "x.tar", "x.tar.bz2", "x.bak"):
        result = await invoke("backup", str(tmp_path / name), "--data-dir", str(data_dir))
        assert result.exit_code == 1 and ".tar.gz" in result.output, result.output
        assert not (tmp_path / name).exists()
    await cli_ok("backup", str(tmp_path / "backup-2026.11.24"), "--data-dir", str(data_dir))  # a date is a name


@pytest.mark.process
async def test_restore_into_an_empty_mount_point(client: AppClient, data_dir: Path, tmp_path: Path) -> None:
    """An empty directory that is a mount point (a Docker volume at /data) is restored into in place: staging
    happens inside it, so nothing has to replace or remove the mount point itself."""
    import subprocess
    import sys

    from tests.test_disk_full import _namespace_reason

    reason = _namespace_reason()
    if reason is not None:
        pytest.skip(reason)
    await fill(client, await sign_in(client), 2)
    dest = tmp_path / "snap.tar.gz"
    await cli_ok("backup", str(dest), "--data-dir", str(data_dir))
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.parent.chmod(0o555)  # as on a host where the volume's parent belongs to someone else
    script = (
        'mount -t tmpfs -o size=64m,mode=0755 speccyd-volume "$1" && '
        '"$2" -m speccyd restore "$3" --data-dir "$1" >&2 && "$2" -m speccyd users list --json --data-dir "$1" && '
        'ls -a "$1"'
    )
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(volume), sys.executable,
             str(dest)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        volume.parent.chmod(0o755)
    assert done.returncode == 0, done.stdout + done.stderr
    users = json.loads(done.stdout[: done.stdout.rindex("]") + 1])
    assert len(users) == 1 and users[0]["files"] == 2
    listing = done.stdout[done.stdout.rindex("]") + 1 :].split()
    assert "speccyd.db" in listing and not [name for name in listing if name.startswith(".speccyd-restore")]
