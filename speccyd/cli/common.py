"""What every command shares: the data-dir option, settings, opening the database, and failing clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from speccyd.config.settings import Settings, SettingsError, load_settings

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="SPECCY_DATA_DIR",
        help="Where the database, audio, secrets and config.toml live.",
        show_default="the platform's user data dir",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_for(data_dir: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(data_dir, overrides)
    except SettingsError as e:
        fail(str(e), 2)


def open_store(settings: Settings) -> Any:
    from speccyd.storage.database import Store, StoreError
    from speccyd.storage.datadir import is_initialized

    if not is_initialized(settings):
        fail(f"{settings.data_dir} is not a speccyd data dir; run `speccyd init` first")
    try:
        return Store(settings.db_path)
    except StoreError as e:
        fail(str(e))


def find_user(store: Any, prefix: str, option: str = "") -> str:
    """The one user whose id starts with `prefix`; exit 2 when none or several do."""
    matches = store.find_users(prefix)
    if len(matches) != 1:
        fail(f"{option}{prefix!r} matches {len(matches)} users; give more of the id (see `speccyd users list`)", 2)
    return str(matches[0])


def removed_line(removed: list[Any]) -> str:
    return f"removed {len(removed)} files, {sum(r.size_bytes or 0 for r in removed) / 1_000_000:.1f} MB"
