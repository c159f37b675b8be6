"""The admin CLI for people: users list/show/limit/revoke, usage with cost, purge's progress and summary."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from speccyd.cli import app as cli
from speccyd.security.revocations import REFRESH
from tests.conftest import AppClient, eventually, generate, invoke, sign_in, wait_status
from tests.server_process import run_cli

MakeClient = Callable[..., Awaitable[AppClient]]


async def run(data_dir: Path, *args: str) -> str:
    result = await invoke(*args, "--data-dir", str(data_dir), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


async def make_files(client: AppClient, headers: dict[str, str], count: int, **body: object) -> None:
    for n in range(count):
        _, first = await generate(client, headers, text=f"file number {n}", **body)
        await wait_status(client, headers, first["content_hash"])


async def user_id(client: AppClient, key: str) -> str:
    response = await client.post("/auth/verify", json={"openai_token": key})
    return str((await response.json())["user_id"])


async def test_users_list_and_show(client: AppClient, data_dir: Path) -> None:
    """`users list` shows every user; `users show` a prefix's activity, 30-day usage and effective limits."""
    alice = await sign_in(client, "sk-test-alice")
    await sign_in(client, "sk-test-bob")
    await make_files(client, alice, 2)
    listed = json.loads(await run(data_dir, "users", "list", "--json"))
    assert len(listed) == 2 and listed[0]["files"] == 2
    table = await run(data_dir, "users", "list")
    assert "2 users" in table and all(len(line) <= 80 for line in table.splitlines())
    alice_id = await user_id(client, "sk-test-alice")
    shown = await run(data_dir, "users", "show", alice_id[:8])
    assert alice_id in shown
    assert "none (server default)" in shown
    data = json.loads(await run(data_dir, "users", "show", alice_id, "--json"))
    assert data["characters_30d"] == len("file number 0") * 2


async def test_users_limit_sets_and_clears_overrides(client: AppClient, data_dir: Path) -> None:
    """`users limit` stores per-user limits; 'default' puts one back to the server-wide setting."""
    headers = await sign_in(client)
    uid = await user_id(client, "sk-test-alice")
    out = await run(data_dir, "users", "limit", uid, "--daily-chars", "10", "--storage", "2MB", "--max-files", "off")
    assert "10 (this user)" in out and "2 MB (this user)" in out and "none (this user)" in out
    status, body = await generate(client, headers, text="more than ten characters")
    assert status == 429 and body["error"]["code"] == "quota_exceeded"
    await run(data_dir, "users", "limit", uid, "--daily-chars", "default")
    assert (await generate(client, headers, text="more than ten characters"))[0] == 202


def test_users_limit_rejects_bad_values(tmp_path: Path) -> None:
    """A bad size or count is a clear usage error, not a traceback."""
    assert CliRunner().invoke(cli, ["init", "--data-dir", str(tmp_path)]).exit_code == 0
    result = CliRunner().invoke(cli, ["users", "limit", "x", "--storage", "lots", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--storage" in result.output


async def test_revoke_from_another_process_ends_sessions_promptly(client: AppClient, data_dir: Path) -> None:
    """`speccyd users revoke`, run as its own process, makes every earlier session token fail within REFRESH."""
    headers = await sign_in(client)
    await make_files(client, headers, 1)
    uid = await user_id(client, "sk-test-alice")
    assert (await client.get("/user/usage", headers=headers)).status == 200
    assert run_cli("users", "revoke", uid[:10], data_dir=data_dir).returncode == 0
    revoked_at = time.monotonic()

    async def refused() -> bool:
        response = await client.get("/user/usage", headers=headers)
        return response.status == 401 and (await response.json())["error"]["code"] == "session_revoked"

    await eventually(refused, timeout=REFRESH + 2, what="revoked session refused")
    assert time.monotonic() - revoked_at <= REFRESH + 2
    # The audio is untouched and the user can sign in again with their key.
    again = await sign_in(client)
    body = await (await client.get("/user/usage", headers=again)).json()
    assert body["files_count"] == 1


async def test_revoke_with_purge_deletes_files(client: AppClient, data_dir: Path) -> None:
    """`users revoke --purge` also deletes the user's audio and leaves others' alone."""
    alice = await sign_in(client, "sk-test-alice")
    bob = await sign_in(client, "sk-test-bob")
    await make_files(client, alice, 2)
    await make_files(client, bob, 1)
    uid = await user_id(client, "sk-test-alice")
    out = await run(data_dir, "users", "revoke", uid, "--purge", "--yes")
    assert "removed 2 files" in out
    assert not list((data_dir / "audio").glob(f"*/{uid}*"))
    bob_again = await sign_in(client, "sk-test-bob")
    assert (await (await client.get("/user/usage", headers=bob_again)).json())["files_count"] == 1


async def test_usage_cli_per_model_cost_and_json(client: AppClient, data_dir: Path) -> None:
    """`speccyd usage` shows per-model cost and savings, a cache-hit ratio, --since, and fits 80 columns."""
    headers = await sign_in(client)
    await make_files(client, headers, 2)
    await make_files(client, headers, 1, model="tts-1-hd")
    await generate(client, headers, text="file number 0")  # a cache hit

    async def hit_recorded() -> dict[str, Any] | None:
        # The server writes cache hits answered from memory about once a second; another process sees them then.
        data: dict[str, Any] = json.loads(await run(data_dir, "usage", "--since", "1d", "--json"))
        return data if data["totals"]["cache_hits"] == 1 else None

    data = await eventually(hit_recorded, what="the cache hit in the usage log")
    models = {m["model"]: m for m in data["models"]}
    assert models["tts-1"]["generations"] == 2 and models["tts-1"]["cache_hits"] == 1
    assert models["tts-1-hd"]["estimated_cost_usd"] == round(len("file number 0") * 30 / 1e6, 4)
    assert data["totals"]["cache_hit_ratio"] == 0.25
    assert data["users"][0]["saved_cost_usd"] == round(len("file number 0") * 15 / 1e6, 4)
    table = await run(data_dir, "usage")
    assert "per model" in table and "tts-1-hd" in table and "cache hit ratio 25%" in table
    assert all(len(line) <= 80 for line in table.splitlines()), table
    bad = await invoke("usage", "--since", "soon", "--data-dir", str(data_dir))
    assert bad.exit_code == 2 and "--since" in bad.output


async def test_purge_many_files_shows_progress_and_summary(client: AppClient, data_dir: Path) -> None:
    """Purging more files than it lists shows a progress bar, then one summary with the users affected."""
    headers = await sign_in(client)
    await make_files(client, headers, 25)
    result = await invoke("purge", "--all", "--yes", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert "removed 25 files" in result.output
    assert "removing" in result.stderr and "25/25" in result.stderr  # the bar, on stderr
    assert "1 users:" in result.output
    assert "removed file" not in result.output and result.output.count("removed ") == 1
