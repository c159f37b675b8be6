"""The SQLite backend: the zero-configuration default, one file in the data dir."""

from __future__ import annotations

from speccyd.storage.sqlite.engine import quarantine, quick_check
from speccyd.storage.sqlite.files import FileQueries
from speccyd.storage.sqlite.playback import PlaybackQueries
from speccyd.storage.sqlite.sync import SyncQueries
from speccyd.storage.sqlite.usage import UsageQueries
from speccyd.storage.sqlite.users import UserQueries

__all__ = ["SqliteDatabase", "quarantine", "quick_check"]


class SqliteDatabase(FileQueries, UserQueries, UsageQueries, SyncQueries, PlaybackQueries):
    """Every query speccyd makes, on one SQLite file (see `storage.database.Database`)."""
