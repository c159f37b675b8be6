"""`speccyd --help` stays fast: the heavy libraries are imported by the commands that use them, not at start.

The time itself is measured in bench/cold_start.py (goal <= 300 ms); this checks the cause, without timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ["aiohttp", "openai", "zeroconf", "cryptography", "rich", "sqlite3", "ifaddr", "speccyd.server"]
# What a report or a purge has no use for: the server, its HTTP stack and the upstream SDK.
SERVER_ONLY = ["aiohttp", "openai", "zeroconf", "ifaddr", "pydantic", "speccyd.server", "speccyd.web", "speccyd.app"]


def imported_by(args: list[str], watch: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Which of `watch` the command `speccyd ARGS` imports, run in a fresh interpreter."""
    probe = (
        "import sys, json\n"
        "from speccyd.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {watch!r} if m in sys.modules)))\n"
    )
    # Without coverage's variables: measuring a child process imports sqlite3 for its data file.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**clean, **(env or {})},
    )
    return list(json.loads(result.stdout.splitlines()[-1]))


def test_help_imports_no_heavy_module() -> None:
    """Rendering `speccyd --help` imports none of aiohttp, openai, zeroconf, cryptography, rich or sqlite3."""
    assert imported_by(["--help"], HEAVY) == []


@pytest.mark.parametrize("args", [["usage", "--json"], ["purge", "--dry-run"], ["users", "list", "--json"]])
def test_reports_and_purges_import_no_server(args: list[str], tmp_path: Path) -> None:
    """`usage`, `purge --dry-run` and `users list` import neither the server nor the openai SDK."""
    from typer.testing import CliRunner

    from speccyd.cli import app

    assert CliRunner().invoke(app, ["init", "--data-dir", str(tmp_path)]).exit_code == 0
    assert imported_by([*args, "--data-dir", str(tmp_path)], SERVER_ONLY) == []


def test_healthcheck_imports_no_heavy_module() -> None:
    """`speccyd healthcheck`, which Docker runs every 30 s, imports no more than `--help` does."""
    assert imported_by(["healthcheck", "--url", "http://127.0.0.1:9/healthz", "--timeout", "1"], HEAVY) == []


def test_import_imports_no_server(tmp_path: Path) -> None:
    """`speccyd import`, checking a file for a real user, imports neither the server nor the openai SDK."""
    import time

    from typer.testing import CliRunner

    from speccyd.cli import app
    from speccyd.config.settings import load_settings
    from tests.seeding import with_db

    data = tmp_path / "data"
    assert CliRunner().invoke(app, ["init", "--data-dir", str(data)]).exit_code == 0
    user = with_db(load_settings(data, env={}), lambda db: db.upsert_user("hash", lambda uid: b"enc", time.time()))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "a.mp3").write_bytes(b"not audio")
    (tmp_path / "export" / "manifest.jsonl").write_text('{"file": "a.mp3", "text": "Hello."}\n')
    args = ["import", "--user", user, "--dry-run", "--data-dir", str(data), str(tmp_path / "export")]
    assert imported_by(args, SERVER_ONLY) == []
