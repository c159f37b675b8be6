"""`speccyd --help` stays fast: the heavy libraries are imported by the commands that use them, not at start.

The time itself is measured in bench/cold_start.py (goal <= 300 ms); this checks the cause, without timing.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["aiohttp", "openai", "zeroconf", "cryptography", "rich", "sqlite3", "ifaddr", "speccyd.server"]


def test_help_imports_no_heavy_module() -> None:
    """Rendering `speccyd --help` imports none of aiohttp, openai, zeroconf, cryptography, rich or sqlite3."""
    probe = (
        "import sys, json\n"
        "from speccyd.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_healthcheck_imports_no_heavy_module() -> None:
    """`speccyd healthcheck`, run by Docker every 30 s, imports no more than `--help` does."""
    probe = (
        "import sys, json\n"
        "from speccyd.cli import app\n"
        "try:\n"
        "    app(['healthcheck', '--url', 'http://127.0.0.1:9/healthz', '--timeout', '1'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 1, e.code\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == []
