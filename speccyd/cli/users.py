"""`speccyd users ...`: list, inspect, limit and sign out users (a sub-command group of the CLI)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from speccyd.cli.common import DataDir, fail, find_user, removed_line, run_with_db, settings_for
from speccyd.config.units import iso

if TYPE_CHECKING:
    from speccyd.storage.database import Database
    from speccyd.storage.records import LimitOverrides, UsageLine, UserInfo, UserUsage


def _iso(timestamp: float) -> str:
    return iso(timestamp) or ""


users_app = typer.Typer(help="List, inspect, limit and sign out users.", no_args_is_help=True)


def _limit_text(override: int | None, default: int, size: bool = False) -> str:
    from speccyd.config.units import format_size

    value = default if override is None else override
    shown = "none" if not value else (format_size(value) if size else str(value))
    return shown + (" (server default)" if override is None else " (this user)")


@users_app.command("list")
def users_list(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Every user: id, first and last seen, files, storage, and whether sessions were revoked."""
    infos = run_with_db(settings_for(data_dir), lambda db: db.user_infos())
    if as_json:
        typer.echo(json.dumps([_user_json(i) for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(infos)} users", title_justify="left")
    for column in ("user", "first seen", "last seen", "files", "MB", "revoked"):
        table.add_column(column, justify="right" if column in {"files", "MB"} else "left")
    for i in infos:
        table.add_row(
            i.user_id[:12], _iso(i.created_at)[:16], _iso(i.last_seen)[:16], str(i.files_count),
            f"{i.storage_bytes / 1_000_000:.1f}", _iso(i.sessions_valid_after)[:16] if i.sessions_valid_after else "",
        )  # fmt: skip
    Console().print(table)


def _user_json(info: Any) -> dict[str, Any]:
    o = info.overrides
    return {
        "user_id": info.user_id,
        "first_seen": _iso(info.created_at),
        "last_seen": _iso(info.last_seen),
        "files": info.files_count,
        "storage_bytes": info.storage_bytes,
        "sessions_revoked_at": _iso(info.sessions_valid_after) if info.sessions_valid_after else None,
        "limit_overrides": {"daily_chars": o.daily_chars, "storage_bytes": o.storage_bytes, "max_files": o.max_files},
    }


@users_app.command("show")
def users_show(
    user: Annotated[str, typer.Argument(help="User id or a unique prefix of it.")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """One user: activity, storage, usage over 30 days with estimated cost, and effective limits."""
    from speccyd.generation.costs import WINDOW_30D, price_table, summarize

    settings = settings_for(data_dir)

    async def read(db: Database) -> tuple[UserInfo, UserUsage | None, list[UsageLine]]:
        now = time.time()
        user_id = await find_user(db, user)
        infos = await db.user_infos(user_id)
        return infos[0], await db.user_usage(user_id, now), await db.usage_lines(now - WINDOW_30D, user_id)

    info, today, usage = run_with_db(settings, read)
    month = summarize(usage, price_table(settings))
    o = info.overrides
    data = {
        **_user_json(info),
        "characters_today": today.characters_today if today else 0,
        **month.figures_30d(),
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    lines = [
        ("user", info.user_id),
        ("first seen", data["first_seen"]),
        ("last seen", data["last_seen"]),
        ("files", f"{info.files_count} ({info.storage_bytes / 1_000_000:.1f} MB)"),
        ("sessions", f"revoked at {data['sessions_revoked_at']}" if data["sessions_revoked_at"] else "active"),
        ("characters", f"{data['characters_today']} today (UTC), {month.characters} in 30 days"),
        ("cache hits", f"{month.cache_hits} in 30 days"),
        ("est. cost", f"${month.cost_usd:.2f} in 30 days, ${month.saved_usd:.2f} saved by the cache"),
        ("daily chars", _limit_text(o.daily_chars, settings.daily_char_quota)),
        ("storage", _limit_text(o.storage_bytes, settings.storage_quota, size=True)),
        ("max files", _limit_text(o.max_files, settings.max_files)),
    ]
    for label, value in lines:
        typer.echo(f"{label:>12}  {value}")


@users_app.command("revoke")
def users_revoke(
    user: Annotated[str, typer.Argument(help="User id or a unique prefix of it.")],
    data_dir: DataDir = None,
    purge_files: Annotated[bool, typer.Option("--purge", help="Also delete all of this user's audio.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """End every session of a user now (a running server notices within about a second)."""
    from speccyd.generation.cleanup import purge as run_purge
    from speccyd.security.revocations import REFRESH
    from speccyd.storage.blobs import open_blobs
    from speccyd.storage.records import PurgeFilter

    settings = settings_for(data_dir)

    async def revoke(db: Database) -> None:
        user_id = await find_user(db, user)
        if purge_files and not yes:
            typer.confirm(f"End every session of {user_id} and delete all of their audio?", abort=True)
        await db.revoke_sessions(user_id, time.time())
        typer.echo(f"ended every session of {user_id} (effective in a running server within {REFRESH:g}s)")
        if purge_files:
            removed = await run_purge(db, open_blobs(settings), PurgeFilter(user_id=user_id), time.time())
            typer.echo(removed_line(removed))

    run_with_db(settings, revoke)


def _limit_value(option: str, value: str | None, parse: Any) -> tuple[bool, int | None]:
    """(given?, value): "default" clears an override, 0 or "off" means no limit for this user."""
    if value is None:
        return False, None
    if value.strip().lower() == "default":
        return True, None
    try:
        return True, int(parse(value))
    except ValueError as e:
        fail(f"{option}: {e}", 2)


@users_app.command("limit")
def users_limit(
    user: Annotated[str, typer.Argument(help="User id or a unique prefix of it.")],
    data_dir: DataDir = None,
    daily_chars: Annotated[
        str | None, typer.Option("--daily-chars", help="Characters per UTC day; 0/off = none; 'default'.")
    ] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="e.g. 500MB; 0/off = none; 'default'.")] = None,
    max_files: Annotated[str | None, typer.Option("--max-files", help="Files kept; 0/off = none; 'default'.")] = None,
) -> None:
    """Give one user their own limits instead of the server-wide settings."""
    from speccyd.config.settings import SPECS
    from speccyd.config.units import parse_size

    changes: dict[str, int | None] = {}
    for name, option, value, parse in (
        ("daily_chars", "--daily-chars", daily_chars, SPECS["daily_char_quota"].parse),
        ("storage_bytes", "--storage", storage, parse_size),
        ("max_files", "--max-files", max_files, SPECS["max_files"].parse),
    ):
        given, parsed = _limit_value(option, value, parse)
        if given:
            changes[name] = parsed
    if not changes:
        fail("give at least one of --daily-chars, --storage, --max-files", 2)
    settings = settings_for(data_dir)

    async def limit(db: Database) -> tuple[str, LimitOverrides]:
        user_id = await find_user(db, user)
        await db.set_limits(user_id, changes)
        return user_id, await db.user_overrides(user_id)

    user_id, o = run_with_db(settings, limit)
    typer.echo(f"limits of {user_id}:")
    typer.echo(f"  daily chars  {_limit_text(o.daily_chars, settings.daily_char_quota)}")
    typer.echo(f"  storage      {_limit_text(o.storage_bytes, settings.storage_quota, size=True)}")
    typer.echo(f"  max files    {_limit_text(o.max_files, settings.max_files)}")
