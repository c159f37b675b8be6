"""`speccyd purge`: delete audio and its records by age, user or expiry; safe while the server runs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from speccyd.cli.common import DataDir, fail, find_user, removed_line, run_with_db, settings_for
from speccyd.config.settings import Settings
from speccyd.config.units import parse_duration
from speccyd.storage.records import FileRow, PurgeFilter

if TYPE_CHECKING:
    from speccyd.storage.database import Database


def purge(
    data_dir: DataDir = None,
    expired: Annotated[bool, typer.Option("--expired", help="Expired audio (the default).")] = False,
    everything: Annotated[bool, typer.Option("--all", help="All audio of every user.")] = False,
    user: Annotated[str | None, typer.Option("--user", help="All audio of one user (id or unique prefix).")] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Audio created longer ago than this (e.g. 3d).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete audio files and their records; safe while the server runs."""
    if everything and (expired or user is not None or older_than is not None):
        # --all removes every file; with another criterion it would quietly ignore that one.
        fail("--all removes all audio of every user; it cannot be combined with --expired, --user or --older-than", 2)
    settings = settings_for(data_dir)
    age = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as e:
            fail(f"--older-than: {e}", 2)

    async def work(db: Database) -> tuple[list[FileRow], float] | None:
        user_id = None if user is None else await find_user(db, user, "--user ")
        what = PurgeFilter(
            expired=expired or not (everything or user_id or age),
            all=everything,
            user_id=user_id,
            older_than=age,
        )
        now = time.time()
        candidates = await db.select_purge(what, now)
        total_mb = sum(r.size_bytes or 0 for r in candidates) / 1_000_000
        if not candidates:
            typer.echo("nothing to remove")
            return None
        if dry_run:
            for row in candidates:
                typer.echo(f"would remove {row.id} ({row.status}, user {row.user_id[:8]}, {row.size_bytes or 0} bytes)")
            typer.echo(f"would remove {len(candidates)} files, {total_mb:.1f} MB")
            return None
        if not yes:
            typer.confirm(f"Remove {len(candidates)} files ({total_mb:.1f} MB)?", abort=True)
        started = time.monotonic()
        removed = await _purge_with_progress(db, settings, what, now, len(candidates))
        return removed, time.monotonic() - started

    done = run_with_db(settings, work)
    if done is None:
        return
    removed, seconds = done
    if len(removed) <= LIST_REMOVED:
        for row in removed:
            typer.echo(f"removed {row.id} ({row.status}, user {row.user_id[:8]})")
    _purge_summary(removed, seconds)


# Up to this many removed files are listed one per line; beyond it, a progress bar and a summary only.
LIST_REMOVED = 20


async def _purge_with_progress(
    db: Database, settings: Settings, what: PurgeFilter, now: float, expected: int
) -> list[FileRow]:
    from speccyd.generation.cleanup import purge as run_purge
    from speccyd.storage.blobs import open_blobs

    blobs = open_blobs(settings)
    if expected <= LIST_REMOVED:
        return await run_purge(db, blobs, what, now)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("removing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # On stderr so a script reading stdout sees only the summary.
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("purge", total=expected)
        return await run_purge(db, blobs, what, now, progress=lambda rows: bar.advance(task, len(rows)))


def _purge_summary(removed: list[Any], seconds: float) -> None:
    users: dict[str, int] = {}
    for row in removed:
        users[row.user_id] = users.get(row.user_id, 0) + 1
    typer.echo(removed_line(removed))
    if removed:
        most = ", ".join(f"{u[:8]} ({n})" for u, n in sorted(users.items(), key=lambda kv: -kv[1])[:5])
        typer.echo(f"  {len(users)} users: {most}{', ...' if len(users) > 5 else ''}; took {seconds:.1f}s")
