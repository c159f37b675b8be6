"""The `speccyd` command: options become Settings, then a core function does the work.

Heavy modules (aiohttp, openai, the server) are imported inside the commands that need them, so that
`speccyd --help` and `speccyd usage` start quickly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from speccyd import __version__
from speccyd.settings import Settings, SettingsError, load_settings, parse_duration

app = typer.Typer(
    name="speccyd",
    help="Self-hosted text-to-speech server for the Speccy apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
    from speccyd.datadir import is_initialized
    from speccyd.store import Store, StoreError

    if not is_initialized(settings):
        fail(f"{settings.data_dir} is not a speccyd data dir; run `speccyd init` first")
    try:
        return Store(settings.db_path)
    except StoreError as e:
        fail(str(e))


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"speccyd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Self-hosted text-to-speech server for the Speccy apps."""


@app.command()
def init(
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate the secrets (ends every session).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Create the data dir, config.toml, secrets and database. Safe to run again."""
    from speccyd.datadir import init_data_dir, is_initialized
    from speccyd.store import StoreError

    settings = settings_for(data_dir)
    if force and is_initialized(settings) and not yes:
        typer.confirm("Regenerate the server secrets? Every device will have to sign in again", abort=True)
    try:
        report = init_data_dir(settings, force=force)
    except (StoreError, OSError) as e:
        fail(str(e))
    for path in report.created:
        typer.echo(f"created {path}")
    if report.rotated_users is not None:
        typer.echo(f"regenerated secrets; re-encrypted {report.rotated_users} stored keys; all sessions ended")
    if not report.created and report.rotated_users is None:
        typer.echo(f"{settings.data_dir} is already initialised; nothing changed")


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.", show_default="0.0.0.0")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one.", show_default="8420")] = None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    settings = settings_for(data_dir, host=host, port=port)
    os.umask(0o077)  # everything the server writes (audio, database, logs it may create) is private
    from speccyd.crypto import SecretsError
    from speccyd.server import serve as run_server
    from speccyd.store import StoreError

    try:
        run_server(settings)
    except (StoreError, SecretsError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot serve on {settings.host}:{settings.port}: {e.strerror or e}")


@app.command()
def usage(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Files, storage and today's generations per user."""
    store = open_store(settings_for(data_dir))
    try:
        rows = store.usage_report(time.time())
    finally:
        store.close()
    users = [
        {
            "user_id": r.user_id,
            "first_seen": _iso(r.first_seen),
            "last_seen": _iso(r.last_seen),
            "files": r.files_count,
            "storage_mb": round(r.storage_bytes / 1_000_000, 3),
            "generated_today": r.generated_today,
            "characters_today": r.characters_today,
        }
        for r in rows
    ]
    totals = {
        k: round(sum(u[k] for u in users), 3) for k in ("files", "storage_mb", "generated_today", "characters_today")
    }
    if as_json:
        typer.echo(json.dumps({"users": users, "totals": totals}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="speccyd usage (today = UTC day)")
    for column in ("user", "first seen", "last seen", "files", "MB", "generated today", "chars today"):
        table.add_column(column, justify="right" if column not in {"user", "first seen", "last seen"} else "left")
    for u in users:
        table.add_row(
            u["user_id"][:8], u["first_seen"][:16], u["last_seen"][:16], str(u["files"]),
            f"{u['storage_mb']:.1f}", str(u["generated_today"]), str(u["characters_today"]),
        )  # fmt: skip
    table.add_section()
    table.add_row(
        f"{len(users)} users", "", "", str(totals["files"]), f"{totals['storage_mb']:.1f}",
        str(totals["generated_today"]), str(totals["characters_today"]),
    )  # fmt: skip
    Console().print(table)


@app.command()
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
    from speccyd.blobs import Blobs
    from speccyd.cleanup import purge as run_purge
    from speccyd.store import PurgeFilter

    settings = settings_for(data_dir)
    age = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as e:
            fail(f"--older-than: {e}", 2)
    store = open_store(settings)
    try:
        user_id = None
        if user is not None:
            matches = store.find_users(user)
            if len(matches) != 1:
                fail(f"--user {user!r} matches {len(matches)} users", 2)
            user_id = matches[0]
        what = PurgeFilter(
            expired=expired or not (everything or user_id or age),
            all=everything,
            user_id=user_id,
            older_than=age,
        )
        now = time.time()
        candidates = store.select_purge(what, now)
        total_mb = sum(r.size_bytes or 0 for r in candidates) / 1_000_000
        if not candidates:
            typer.echo("nothing to remove")
            return
        if dry_run:
            for row in candidates:
                typer.echo(f"would remove {row.id} ({row.status}, user {row.user_id[:8]}, {row.size_bytes or 0} bytes)")
            typer.echo(f"would remove {len(candidates)} files, {total_mb:.1f} MB")
            return
        if not yes:
            typer.confirm(f"Remove {len(candidates)} files ({total_mb:.1f} MB)?", abort=True)
        removed = run_purge(store, Blobs(settings.audio_dir), what, now)
    finally:
        store.close()
    for row in removed:
        typer.echo(f"removed {row.id} ({row.status}, user {row.user_id[:8]})")
    typer.echo(f"removed {len(removed)} files, {sum(r.size_bytes or 0 for r in removed) / 1_000_000:.1f} MB")


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="The text to speak; '-' reads it from standard input.")],
    server: Annotated[str, typer.Option("--server", help="The speccyd server's URL.")] = "http://127.0.0.1:8420",
    voice: Annotated[str, typer.Option("--voice", help="Voice, e.g. alloy, nova, coral.")] = "alloy",
    model: Annotated[str, typer.Option("--model", help="tts-1, tts-1-hd or gpt-4o-mini-tts.")] = "tts-1",
    speed: Annotated[float, typer.Option("--speed", help="0.25 to 4.0.")] = 1.0,
    instructions: Annotated[
        str | None, typer.Option("--instructions", help="How to speak (gpt-4o-mini-tts only).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to save the audio; its suffix picks the format.")
    ] = None,
    timeout: Annotated[str, typer.Option("--timeout", help="Longest wait for the audio (e.g. 90s, 10m).")] = "10m",
) -> None:
    """Sign in with OPENAI_API_KEY, generate speech on a speccyd server and save it: a terminal test."""
    import asyncio
    import os

    from speccyd.tts import FORMATS

    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        fail("set OPENAI_API_KEY to the OpenAI key to sign in with", 2)
    if text == "-":
        text = sys.stdin.read()
    output = output or Path("speech.mp3")
    fmt = output.suffix.lstrip(".").lower() or "mp3"
    if fmt not in FORMATS:
        fail(f"cannot save {output.name}: the suffix must be one of {', '.join(FORMATS)}", 2)
    try:
        wait = parse_duration(timeout)
    except ValueError as e:
        fail(f"--timeout: {e}", 2)
    request: dict[str, Any] = {"text": text, "voice": voice, "model": model, "format": fmt, "speed": speed}
    if instructions:
        request["instructions"] = instructions
    asyncio.run(_say(server, key, request, output, wait))


async def _say(server: str, key: str, request: dict[str, Any], output: Path, wait: float) -> None:
    import aiohttp
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

    from speccyd.client import ClientError, SpeccyClient

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=60)) as session:
            client = SpeccyClient(server, session)
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(f"signing in to {server}", total=None)
                await client.sign_in(key)
                progress.update(task, description="requesting speech")
                file = await client.generate(request)
                cached = file["status"] == "ready"
                file = await client.wait_ready(
                    file, wait, lambda s: progress.update(task, description=f"generating ({s:.0f}s)")
                )
                progress.update(task, description=f"saving {output.name}")
                size = await client.download(
                    file, output, lambda done, total: progress.update(task, completed=done, total=total)
                )
    except ClientError as e:
        fail(str(e))
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        fail(f"cannot reach {server}: {e or type(e).__name__}")
    origin = "from the server's cache" if cached else "generated"
    console.print(f"saved {output} ({size:,} bytes, {origin}; file {file['file_id']})")


def _iso(timestamp: float) -> str:
    from speccyd.timeutil import iso

    return iso(timestamp) or ""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
