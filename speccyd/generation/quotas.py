"""Per-user limits on new generations: the server-wide defaults, and the error a user sees past one.

The check itself runs inside `Database.claim`, in the same transaction that creates the row, so it only
ever applies to *new* generations: a cache hit or joining a generation in flight is never refused, since
it costs nothing upstream and stores nothing new. Per-user overrides live in the database
(`speccyd users limit`); the defaults come from settings and are replaced on SIGHUP.
"""

from __future__ import annotations

import math

from speccyd.config.settings import Settings
from speccyd.config.units import format_size, iso
from speccyd.generation.errors import DailyQuotaExceeded, QuotaExceeded, StorageQuotaExceeded
from speccyd.storage.errors import LimitReached
from speccyd.storage.records import Limits

DAY = 86400


def limits_from(settings: Settings) -> Limits:
    return Limits(settings.daily_char_quota, settings.storage_quota, settings.max_files)


class Quotas:
    """The server-wide default limits; one mutable holder so a reload reaches every user at once."""

    def __init__(self, defaults: Limits) -> None:
        self.defaults = defaults


def next_utc_midnight(now: float) -> float:
    return now - (now % DAY) + DAY


def quota_error(e: LimitReached, characters: int, now: float) -> QuotaExceeded:
    """The daily limit (it resets at UTC midnight), or storage and file count, in words the user acts on."""
    if e.limit == "daily_chars":
        reset = next_utc_midnight(now)
        return DailyQuotaExceeded(
            f"daily character quota reached: {e.used} of {e.allowed} characters used today, this request needs "
            f"{characters}; it resets at {iso(reset)} (midnight UTC)",
            max(1, math.ceil(reset - now)),
        )
    when = (
        f"space frees up as your audio expires (the next file at {iso(e.frees_at)}) or when you delete files"
        if e.frees_at is not None
        else "delete files to make room"
    )
    if e.limit == "storage":
        what = (
            f"storage quota reached: {format_size(e.used)} stored of {format_size(e.allowed)} allowed (files being "
            f"generated at their expected size), and this audio needs about {format_size(e.needed)}"
        )
    else:
        what = f"file limit reached: {e.used} of {e.allowed} files kept (counting those generating or failed)"
    return StorageQuotaExceeded(f"{what}; {when}")
