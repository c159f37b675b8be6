"""The code stays clean: ruff (lint and format), mypy strict and the import layers, as README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "speccyd", "tests", "bench"],
        ["ruff", "format", "--check", "speccyd", "tests", "bench"],
        ["mypy"],
        ["lint-imports", "--no-cache"],
    ],
    ids=["ruff-check", "ruff-format", "mypy", "import-layers"],
)
def test_clean(command: list[str]) -> None:
    """The tool reports no problems."""
    # Tools of this interpreter's environment: lint-imports is a script beside it; the others run as modules.
    if command[0] == "lint-imports":
        argv = [str(Path(sys.executable).with_name("lint-imports")), *command[1:]]
    else:
        argv = [sys.executable, "-m", *command]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gating_tools_are_the_pinned_versions() -> None:
    """The lint and type checkers installed are exactly .ci/constraints.txt's, which README's command installs."""
    from importlib.metadata import version

    pins = [line.split("==") for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines() if "==" in line]
    assert {"ruff", "mypy", "import-linter"} <= {name for name, _ in pins}
    assert {name: version(name) for name, _ in pins} == dict(pins)
