"""`speccyd backup` and `speccyd restore`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from speccyd.cli.common import DataDir, fail, run_with_db, settings_for
from speccyd.config.text import describe


def backup(
    dest: Annotated[Path, typer.Argument(help="A new directory, or a file name ending in .tar.gz.")],
    data_dir: DataDir = None,
    no_secrets: Annotated[
        bool, typer.Option("--no-secrets", help="Leave out the server secrets (sessions and stored keys are lost).")
    ] = False,
) -> None:
    """Snapshot the database, audio, config and secrets; safe while the server runs."""
    from speccyd.storage.backup import BackupError
    from speccyd.storage.backup import backup as run_backup
    from speccyd.storage.errors import StoreError

    settings = settings_for(data_dir)
    run_with_db(settings, lambda db: db.server_id())  # fails clearly on a missing or unusable data dir
    try:
        report = run_backup(settings, dest, secrets=not no_secrets)
    except (BackupError, StoreError, OSError) as e:
        fail(f"backup failed: {describe(e)}")
    typer.echo(
        f"backed up {report.files} audio files ({report.bytes / 1_000_000:.1f} MB), the database and config"
        f"{' and secrets' if report.secrets else ' (no secrets)'} to {report.dest}"
    )
    if report.vanished:
        typer.echo(f"{report.vanished} files expired or were purged during the backup and are not in it")


def restore(
    src: Annotated[Path, typer.Argument(help="A backup directory or .tar.gz made by `speccyd backup`.")],
    data_dir: DataDir = None,
) -> None:
    """Check a backup's integrity and restore it into a new or empty data dir."""
    from speccyd.config.settings import default_data_dir
    from speccyd.storage.backup import BackupError
    from speccyd.storage.restore import restore as run_restore

    target = data_dir or default_data_dir()
    try:
        report = run_restore(src, target)
    except (BackupError, OSError) as e:
        fail(f"restore failed: {describe(e)}")
    typer.echo(f"restored {report.files} audio files ({report.bytes / 1_000_000:.1f} MB) into {report.data_dir}")
    if not report.secrets:
        typer.echo("the backup has no secrets: new ones are made at start; every user must sign in again")
