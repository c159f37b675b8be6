"""Playback: a file's timeline (read-along pieces, HLS segments, chapters) and its user's resume position."""

from __future__ import annotations

import sqlite3

from speccyd.storage.records import ByteSegment, FileRow, TimedChapter, TimedPiece, TimelineRecord
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.files import FILE_COLUMNS, file_row


class PlaybackQueries(Engine):
    async def save_timeline(self, file_id: str, timeline: TimelineRecord) -> bool:
        """Store a file's timeline (replacing any) and its duration; False when the file's row is gone."""

        def save(db: sqlite3.Connection) -> bool:
            updated = db.execute(
                "UPDATE audio_files SET duration_s = ? WHERE id = ?", (timeline.duration_s, file_id)
            ).rowcount
            if not updated:
                return False
            db.execute("DELETE FROM timelines WHERE file_id = ?", (file_id,))
            db.execute(
                "INSERT INTO timelines (file_id, run, sample_rate, served_live) VALUES (?, ?, ?, ?)",
                (file_id, timeline.run, timeline.sample_rate, int(timeline.served_live)),
            )
            db.executemany(
                "INSERT INTO timeline_pieces (file_id, idx, text_start, text_end, samples) VALUES (?, ?, ?, ?, ?)",
                [(file_id, i, *p) for i, p in enumerate(timeline.pieces)],
            )
            db.executemany(
                "INSERT INTO hls_segments (file_id, idx, byte_start, byte_end, samples) VALUES (?, ?, ?, ?, ?)",
                [(file_id, i, *s) for i, s in enumerate(timeline.segments)],
            )
            db.executemany(
                "INSERT INTO chapters (file_id, idx, title, text_start, sample) VALUES (?, ?, ?, ?, ?)",
                [(file_id, i, *c) for i, c in enumerate(timeline.chapters)],
            )
            return True

        return await self.write(save)

    async def ready_without_timeline(self, limit: int) -> list[FileRow]:
        """Ready files made before timelines were kept (oldest first), for the start-up backfill."""
        return await self.read(
            lambda db: [
                FileRow(*r)
                for r in db.execute(
                    f"SELECT {FILE_COLUMNS} FROM audio_files a WHERE status = 'ready' AND NOT EXISTS "
                    "(SELECT 1 FROM timelines t WHERE t.file_id = a.id) ORDER BY created_at LIMIT ?",
                    (limit,),
                )
            ]
        )

    async def get_timeline(self, file_id: str) -> TimelineRecord | None:
        def get(db: sqlite3.Connection) -> TimelineRecord | None:
            db.execute("BEGIN")  # one snapshot for the four tables
            try:
                head = db.execute(
                    "SELECT run, sample_rate, served_live FROM timelines WHERE file_id = ?", (file_id,)
                ).fetchone()
                if head is None:
                    return None
                pieces = db.execute(
                    "SELECT text_start, text_end, samples FROM timeline_pieces WHERE file_id = ? ORDER BY idx",
                    (file_id,),
                ).fetchall()
                segments = db.execute(
                    "SELECT byte_start, byte_end, samples FROM hls_segments WHERE file_id = ? ORDER BY idx",
                    (file_id,),
                ).fetchall()
                chapters = db.execute(
                    "SELECT title, text_start, sample FROM chapters WHERE file_id = ? ORDER BY idx", (file_id,)
                ).fetchall()
            finally:
                db.execute("COMMIT")
            return TimelineRecord(
                run=head[0],
                sample_rate=head[1],
                pieces=tuple(TimedPiece(*p) for p in pieces),
                segments=tuple(ByteSegment(*s) for s in segments),
                chapters=tuple(TimedChapter(*c) for c in chapters),
                served_live=bool(head[2]),
            )

        return await self.read(get)

    async def set_position(
        self, user_id: str, file_id: str, position_s: float, device: str | None, now: float
    ) -> FileRow | None:
        """Where the user stopped listening, clamped to the file's duration when it is known; last write wins.

        None when the file is not this user's. The UPDATE takes the next change sequence (migration 2).
        """
        return await self.write(
            lambda db: file_row(
                db.execute(
                    "UPDATE audio_files SET position_s = CASE WHEN duration_s IS NOT NULL AND ? > duration_s "
                    "THEN duration_s ELSE ? END, position_device = ?, position_at = ? "
                    f"WHERE id = ? AND user_id = ? RETURNING {FILE_COLUMNS}",
                    (position_s, position_s, device, now, file_id, user_id),
                ).fetchone()
            )
        )
