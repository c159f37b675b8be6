"""What the storage layer refuses, as domain exceptions: `web/errors.py` gives each its status and code."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used (newer than this program, unreadable, ...)."""


class StorageFull(Exception):
    """The disk holding the data is full: audio or database rows cannot be written."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("the server's disk is full; ask its owner to free space, then retry")
        self.detail = detail


class UnknownUser(Exception):
    """A signed session names a user the database does not have (removed, or the database was reset)."""

    def __init__(self, user_id: str) -> None:
        super().__init__("this session's user no longer exists; sign in again")
        self.user_id = user_id


class LimitReached(Exception):
    """A new generation would go over one of the user's limits; nothing was written."""

    def __init__(self, limit: str, allowed: int, used: int, frees_at: float | None, needed: int = 0) -> None:
        super().__init__(f"{limit} limit reached")
        self.limit = limit  # "daily_chars", "storage" or "max_files"
        self.allowed = allowed
        self.used = used
        self.frees_at = frees_at  # when the oldest kept file expires (storage and file limits)
        self.needed = needed  # storage: the estimated size of the audio asked for


class CursorTooOld(Exception):
    """The cursor is older than the oldest kept tombstone, or newer than anything this database wrote."""
