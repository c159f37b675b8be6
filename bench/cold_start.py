"""Cold start of the CLI: wall time of `speccyd --help` (goal: <= 300 ms from the installed package).

    python bench/cold_start.py [--runs 20] [--exe PATH] [ARGS...]

Runs the command a bounded number of times after one warm-up (so the OS file cache and .pyc files are
warm, as they are on a server that has run speccyd before) and prints min, median and max.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_MS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--exe", default=str(Path(sys.executable).with_name("speccyd")))
    parser.add_argument("args", nargs="*", default=["--help"])
    options = parser.parse_args()
    command = [options.exe, *options.args]
    subprocess.run(command, capture_output=True, check=True, timeout=60)  # warm-up
    times = []
    for _ in range(min(options.runs, 200)):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    median = statistics.median(times)
    verdict = "met" if median <= GOAL_MS else "MISSED"
    print(
        f"{' '.join(command)}: {len(times)} runs, min {min(times):.0f} ms, median {median:.0f} ms, "
        f"max {max(times):.0f} ms (goal <= {GOAL_MS:.0f} ms: {verdict})"
    )
    return 0 if median <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
