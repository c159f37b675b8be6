"""Ready audio kept in memory for the two hot paths: cache hits and downloads.

A cache hit then needs no database round trip: its expiry bump, the user's last-seen time and the usage
record are queued and written in one transaction about once a second (`drain` -> `Database.record_hits`).
The database stays the truth: a row missing here is read from it, and anything another process removed
(`speccyd purge`) is caught because its audio file is gone, which callers check before trusting an entry.
"""

from __future__ import annotations

import dataclasses

from speccyd.storage.records import FileRow, Hit

# Enough for every ready file of a household server; past it the oldest entries are forgotten, not lost.
MAX_ENTRIES = 50_000


class ReadyCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._by_id: dict[str, FileRow] = {}
        self._by_content: dict[tuple[str, str], str] = {}
        self._hits: list[Hit] = []

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, row: FileRow) -> None:
        if row.status != "ready":
            self.drop(row.id)
            return
        self._by_id.pop(row.id, None)  # re-insert: dict order is the eviction order
        self._by_id[row.id] = row
        self._by_content[(row.user_id, row.content_hash)] = row.id
        while len(self._by_id) > self._max:
            self.drop(next(iter(self._by_id)))

    def drop(self, file_id: str) -> None:
        row = self._by_id.pop(file_id, None)
        if row is not None and self._by_content.get((row.user_id, row.content_hash)) == file_id:
            del self._by_content[(row.user_id, row.content_hash)]

    def get(self, file_id: str) -> FileRow | None:
        return self._by_id.get(file_id)

    def find(self, user_id: str, content_hash: str) -> FileRow | None:
        file_id = self._by_content.get((user_id, content_hash))
        return None if file_id is None else self._by_id.get(file_id)

    def hit(self, row: FileRow, now: float, retention: float) -> FileRow:
        """Extend a ready row's expiry in memory and queue the write; returns the updated row."""
        expires = now + retention
        # Expiry is shown and signed at one-second resolution: within the same second the row can stay.
        if int(expires) > int(row.expires_at):
            row = dataclasses.replace(row, expires_at=expires, updated_at=now)
            self.put(row)
        self._hits.append(
            Hit(row.id, row.user_id, row.model, row.characters, now, expires, row.input_tokens, row.output_tokens)
        )
        return row

    def drain(self) -> list[Hit]:
        hits, self._hits = self._hits, []
        return hits

    def requeue(self, hits: list[Hit]) -> None:
        """Hits whose write failed: written with the next batch."""
        self._hits[:0] = hits
