"""The `speccyd` command run as a real process: init, errors, usage and purge."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from speccyd import __version__
from speccyd.config.settings import Settings, load_settings
from tests.conftest import sign_in
from tests.seeding import ready_ids, seed
from tests.server_process import run_cli


def test_version() -> None:
    """--version prints the version."""
    result = run_cli("--version", data_dir=None)
    assert result.returncode == 0
    assert result.stdout.strip() == f"speccyd {__version__}"


def test_init_then_again(tmp_path: Path) -> None:
    """init creates the data dir; a second init says nothing changed."""
    data = tmp_path / "data"
    first = run_cli("init", data_dir=data)
    assert first.returncode == 0, first.stderr
    assert f"created {data}" in first.stdout
    assert (data / "speccyd.db").exists()
    second = run_cli("init", data_dir=data)
    assert second.returncode == 0
    assert "nothing changed" in second.stdout


def test_bad_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    """A bad config value stops every command with exit code 2 and one line naming key and source."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text('retention = "a while"\n')
    for command in ("serve", "init", "usage", "purge"):
        result = run_cli(command, data_dir=data)
        assert result.returncode == 2, command
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: retention: cannot parse duration")
        assert "Traceback" not in result.stderr + result.stdout


def test_commands_on_missing_data_dir_fail_cleanly(tmp_path: Path) -> None:
    """usage and purge on a data dir that was never initialised say so in one line."""
    for command in ("usage", "purge"):
        result = run_cli(command, data_dir=tmp_path / "none")
        assert result.returncode == 1
        assert "run `speccyd init` first" in result.stderr
        assert "Traceback" not in result.stderr


def _seed(data: Path, files: int, *, expired: int = 0) -> tuple[Settings, str]:
    """A data dir with one user and `files` ready audio files, `expired` of them past their expiry."""
    assert run_cli("init", data_dir=data).returncode == 0
    settings = load_settings(data, env={})
    return settings, seed(settings, files, expired=expired, now=time.time())


def test_usage_json_and_table(tmp_path: Path) -> None:
    """usage --json lists each user's files and today's figures; the table shows the short id."""
    data = tmp_path / "data"
    _, user = _seed(data, 3)
    result = run_cli("usage", "--json", data_dir=data)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["users"][0]["user_id"] == user
    assert report["users"][0]["files"] == 3
    assert report["users"][0]["generated_today"] == 3
    assert report["totals"]["files"] == 3
    table = run_cli("usage", data_dir=data)
    assert user[:8] in table.stdout
    assert "1 users" in table.stdout


def test_purge_expired_is_the_default(tmp_path: Path) -> None:
    """purge without a criterion removes only expired audio, files and rows alike."""
    data = tmp_path / "data"
    settings, _ = _seed(data, 4, expired=1)
    result = run_cli("purge", "--yes", data_dir=data)
    assert result.returncode == 0, result.stderr
    assert "removed 1 files" in result.stdout
    assert len(ready_ids(settings)) == 3
    assert len(list((data / "audio").glob("*/*.mp3"))) == 3


def test_purge_dry_run_and_confirmation(tmp_path: Path) -> None:
    """--dry-run lists without removing; answering no to the prompt removes nothing."""
    data = tmp_path / "data"
    settings, _ = _seed(data, 2)
    dry = run_cli("purge", "--all", "--dry-run", data_dir=data)
    assert "would remove 2 files" in dry.stdout
    declined = run_cli("purge", "--all", data_dir=data, input="n\n")
    assert declined.returncode != 0
    assert len(ready_ids(settings)) == 2
    accepted = run_cli("purge", "--all", data_dir=data, input="y\n")
    assert accepted.returncode == 0
    assert ready_ids(settings) == set()


def test_purge_by_user_and_age(tmp_path: Path) -> None:
    """--user takes a unique id prefix; --older-than takes a duration; a bad one is exit 2."""
    data = tmp_path / "data"
    _, user = _seed(data, 3, expired=2)
    old = run_cli("purge", "--older-than", "1h", "--yes", data_dir=data)
    assert "removed 2 files" in old.stdout
    bad = run_cli("purge", "--older-than", "soon", data_dir=data)
    assert bad.returncode == 2
    unknown = run_cli("purge", "--user", "ffff", "--yes", data_dir=data)
    assert unknown.returncode == 2
    mine = run_cli("purge", "--user", user[:8], "--yes", data_dir=data)
    assert "removed 1 files" in mine.stdout
    assert list((data / "audio").glob("*/*.mp3")) == []


async def test_init_force_rotates_secrets_but_keeps_users(data_dir: Path, make_client: Any) -> None:
    """init --force ends every session, yet the same key still maps to the same user and files."""
    client = await make_client()
    old = await sign_in(client)
    user_before = (await (await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})).json())["user_id"]
    await client.close()
    result = await asyncio.to_thread(run_cli, "init", "--force", "--yes", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 1 stored keys" in result.stdout
    client = await make_client()
    assert (await client.get("/user/usage", headers=old)).status == 401
    again = await (await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})).json()
    assert again["user_id"] == user_before


def test_init_force_asks_first(tmp_path: Path) -> None:
    """Without --yes, init --force asks, and a 'no' leaves the secrets alone."""
    data = tmp_path / "data"
    run_cli("init", data_dir=data)
    before = (data / "secrets" / "session.key").read_bytes()
    result = run_cli("init", "--force", data_dir=data, input="n\n")
    assert result.returncode != 0
    assert (data / "secrets" / "session.key").read_bytes() == before


async def test_a_rotation_cut_off_by_a_crash_is_finished_or_forgotten(tmp_path: Path) -> None:
    """New secrets left beside the old ones by a crash are put in place if the database already holds the keys
    re-encrypted under them, and discarded if it does not: either way every stored key stays readable."""
    from speccyd.config.settings import load_settings
    from speccyd.security.crypto import ServerSecrets
    from speccyd.security.provision import SECRETS_FINGERPRINT, init_data_dir
    from speccyd.storage.database import open_database

    settings = load_settings(tmp_path / "data", env={})
    await init_data_dir(settings)
    old = ServerSecrets.load(settings.secrets_dir)
    db = open_database(settings)
    user = await db.upsert_user(old.key_lookup_hash("sk-k"), lambda uid: old.encrypt_key("sk-k", uid), 1.0)
    # Crash after the transaction: the database names the new secrets, the files are still *.next.
    new = ServerSecrets.generate()
    new.save_as(settings.secrets_dir / "session.key.next", settings.secrets_dir / "encryption.key.next")
    await db.rewrap_user_keys([(user, new.key_lookup_hash("sk-k"), new.encrypt_key("sk-k", user))],
                              (SECRETS_FINGERPRINT, new.fingerprint))  # fmt: skip
    await db.close()
    await init_data_dir(settings)
    assert ServerSecrets.load(settings.secrets_dir).fingerprint == new.fingerprint
    assert sorted(p.name for p in settings.secrets_dir.iterdir()) == ["encryption.key", "session.key"]
    db = open_database(settings)
    assert new.decrypt_key((await db.user_keys())[0][1], user) == "sk-k"
    # Crash before the transaction: the new files exist, the database does not name them.
    newer = ServerSecrets.generate()
    newer.save_as(settings.secrets_dir / "session.key.next", settings.secrets_dir / "encryption.key.next")
    await db.close()
    await init_data_dir(settings)
    assert ServerSecrets.load(settings.secrets_dir).fingerprint == new.fingerprint
    assert sorted(p.name for p in settings.secrets_dir.iterdir()) == ["encryption.key", "session.key"]


# --- one readable line for every refusal (issue 11) ---


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    """An unknown option, a missing argument or a bad value is one `error:` line naming the command's help."""
    for args in (["purge", "--bogus"], ["backup"], ["users", "limit"], ["say", "x", "--speed", "fast"]):
        result = run_cli(*args, data_dir=None)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_contradictory_purge_options_are_refused(tmp_path: Path) -> None:
    """--all with --expired, --user or --older-than is refused before anything is read or removed."""
    data = tmp_path / "data"
    run_cli("init", data_dir=data)
    for extra in (["--expired"], ["--user", "abc"], ["--older-than", "3d"]):
        result = run_cli("purge", "--all", *extra, "--yes", data_dir=data)
        assert result.returncode == 2 and "cannot be combined" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_os_errors_are_sentences(tmp_path: Path) -> None:
    """A file-system error reads as a sentence naming the path, never Python's "[Errno N] ...: '...'"."""
    data = tmp_path / "data"
    run_cli("init", data_dir=data)
    results = [
        run_cli("backup", "/proc/no/such/place", data_dir=data),
        run_cli("restore", str(tmp_path / "nothing.tar.gz"), data_dir=tmp_path / "restored"),
        run_cli("serve", "--host", "no-such-host.invalid", "--port", "0", data_dir=data),
    ]
    for result in results:
        assert result.returncode != 0
        assert "[Errno" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_serve_with_a_bad_host_says_only_that(tmp_path: Path) -> None:
    """`serve` on a host that does not resolve prints its one error line and nothing before it: the address is
    bound before anything starts (no database opened, no job resumed, nothing logged)."""
    data = tmp_path / "data"
    result = run_cli("serve", "--host", "999.1.1.1", "--port", "0", data_dir=data)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot serve on 999.1.1.1:0: "), result.stderr
    assert result.stdout == "" and not (data / "speccyd.db").exists()


def test_say_to_an_unwritable_path_is_a_local_problem(tmp_path: Path) -> None:
    """`say -o` into a directory that cannot be written says so, without trying (or blaming) the server."""
    import os
    import subprocess
    import sys

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-say"}  # (root can write into a 0500 directory)
    for output in (not_a_dir / "out.mp3", tmp_path / "missing-dir" / "out.mp3", tmp_path, Path("/proc/out.mp3")):
        done = subprocess.run(
            [sys.executable, "-m", "speccyd", "say", "hello", "--server", "http://127.0.0.1:9", "-o", str(output)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode != 0
        assert "cannot reach" not in done.stderr and "cannot save the audio" in done.stderr, done.stderr
        assert "[Errno" not in done.stderr
