"""What every command shares: the data-dir option, settings, opening the database, and failing clearly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from speccyd.config.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from speccyd.storage.database import Database

T = TypeVar("T")

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


def run_with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the data dir's database, run `work` on it and close it: one event loop for the command."""
    import asyncio

    from speccyd.storage.database import open_database
    from speccyd.storage.datadir import is_initialized
    from speccyd.storage.errors import StoreError

    if not is_initialized(settings):
        fail(f"{settings.data_dir} is not a speccyd data dir; run `speccyd init` first")

    async def run() -> T:
        try:
            db = open_database(settings)
        except StoreError as e:
            fail(str(e))
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


async def find_user(db: Database, prefix: str, option: str = "") -> str:
    """The one user whose id starts with `prefix`; exit 2 when none or several do."""
    matches = await db.find_users(prefix)
    if len(matches) != 1:
        fail(f"{option}{prefix!r} matches {len(matches)} users; give more of the id (see `speccyd users list`)", 2)
    return str(matches[0])


def removed_line(removed: list[Any]) -> str:
    return f"removed {len(removed)} files, {sum(r.size_bytes or 0 for r in removed) / 1_000_000:.1f} MB"
