"""Units people type and read: durations ("7d"), sizes ("500MB"), and timestamps as the API shows them."""

from __future__ import annotations

import re
from datetime import UTC, datetime


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from "500ms", "3s", "10m", "1.5h" or "7d"; a unit is required so "7" is never ambiguous."""
    if not isinstance(value, str):
        raise ValueError("expected a duration string such as '30s', '10m', '7d'")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"cannot parse duration {value!r} (use a number and one of ms, s, m, h, d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)


_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(value: object) -> int:
    """Bytes from "500MB", "1GB", "2GiB" or a bare number of bytes; 0 or "off" means no limit."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '500MB' or 'off'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be at least 0, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as '500MB' or 'off'")
    if value.strip().lower() in {"off", "none"}:
        return 0
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"cannot parse size {value!r} (use a number and one of B, KB, MB, GB, TB, KiB, MiB, GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


def format_size(size: int) -> str:
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"
