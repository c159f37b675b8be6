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
from speccyd.config.settings import Settings, SettingsError, load_settings, parse_duration

app = typer.Typer(
    name="speccyd",
    help="Self-hosted text-to-speech server for the Speccy apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rendering it with rich imports ~90 ms of modules, a third of the 300 ms start budget.
    rich_markup_mode=None,
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
    tls: Annotated[
        bool, typer.Option("--tls", help="Create a self-signed certificate and serve HTTPS from now on.")
    ] = False,
    new_cert: Annotated[
        bool, typer.Option("--new-cert", help="With --tls: replace an existing certificate (apps must re-pin).")
    ] = False,
) -> None:
    """Create the data dir, config.toml, secrets and database. Safe to run again."""
    from speccyd.storage.database import StoreError
    from speccyd.storage.datadir import init_data_dir, is_initialized

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
    if tls:
        _init_tls(settings, renew=new_cert)
    elif not report.created and report.rotated_users is None:
        typer.echo(f"{settings.data_dir} is already initialised; nothing changed")


def _init_tls(settings: Settings, renew: bool) -> None:
    from speccyd.config.settings import set_config_values
    from speccyd.security.tls import (
        CERT_FILE,
        KEY_FILE,
        TLSError,
        create_self_signed,
        fingerprint,
        host_names_and_addresses,
    )

    cert_path, key_path = settings.data_dir / CERT_FILE, settings.data_dir / KEY_FILE
    try:
        if cert_path.exists() and key_path.exists() and not renew:
            # A new certificate means every app must re-pin it: only when asked.
            typer.echo(f"keeping {cert_path} (--new-cert replaces it)")
            digest = fingerprint(cert_path)
        else:
            names, addresses = host_names_and_addresses()
            cert = create_self_signed(settings.data_dir, names, addresses)
            typer.echo(f"created {cert.cert_path} and {cert.key_path} for {', '.join(cert.names)}")
            digest = cert.fingerprint
        # Relative to the data dir, so the data dir can move (or be mounted elsewhere by systemd).
        set_config_values(settings.config_path, {"tls_cert": CERT_FILE, "tls_key": KEY_FILE})
    except (OSError, TLSError) as e:
        fail(f"cannot set up TLS: {e}")
    typer.echo(f"enabled HTTPS in {settings.config_path} (restart the server to use it)")
    typer.echo(f"SHA-256 fingerprint: {digest}")


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.", show_default="0.0.0.0")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one.", show_default="8420")] = None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    settings = settings_for(data_dir, host=host, port=port)
    os.umask(0o077)  # everything the server writes (audio, database, logs it may create) is private
    from speccyd.security.tls import TLSError, server_context

    try:
        server_context(settings)  # a bad certificate is reported at once, before the server's heavy imports
    except TLSError as e:
        fail(str(e))
    from speccyd.security.crypto import SecretsError
    from speccyd.server import serve as run_server
    from speccyd.storage.database import StoreError

    try:
        run_server(settings)
    except (StoreError, SecretsError, TLSError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot serve on {settings.host}:{settings.port}: {e.strerror or e}")


@app.command()
def usage(
    data_dir: DataDir = None,
    since: Annotated[str, typer.Option("--since", help="Window for generations, cache hits and cost.")] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Files, storage, generations, cache hits and estimated cost, per user and per model."""
    from speccyd.generation.costs import price_table, usage_report

    try:
        window = parse_duration(since)
    except ValueError as e:
        fail(f"--since: {e}", 2)
    settings = settings_for(data_dir)
    store = open_store(settings)
    now = time.time()
    try:
        rows = store.usage_report(now)
        lines = store.usage_lines(now - window)
    finally:
        store.close()
    prices = price_table(settings)
    report = {"since": since, **usage_report(rows, lines, prices)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    users, models, totals = report["users"], report["models"], report["totals"]
    from rich.console import Console
    from rich.table import Table

    # Eight narrow columns: fits an 80-column terminal with user ids cut to 8 characters.
    console = Console()
    table = Table(title=f"speccyd usage, last {since} (cost is an estimate)", title_justify="left")
    for column in ("user", "files", "MB", "gens", "chars", "hits", "cost $", "saved $"):
        table.add_column(column, justify="left" if column == "user" else "right")
    for u in users:
        table.add_row(
            u["user_id"][:8], str(u["files"]), f"{u['storage_mb']:.1f}", str(u["generations"]),
            str(u["characters"]), str(u["cache_hits"]), f"{u['estimated_cost_usd']:.2f}",
            f"{u['saved_cost_usd']:.2f}",
        )  # fmt: skip
    table.add_section()
    table.add_row(
        f"{len(users)} users", str(totals["files"]), f"{totals['storage_mb']:.1f}", str(totals["generations"]),
        str(totals["characters"]), str(totals["cache_hits"]), f"{totals['estimated_cost_usd']:.2f}",
        f"{totals['saved_cost_usd']:.2f}",
    )  # fmt: skip
    console.print(table)
    if models:
        by_model = Table(title="per model", title_justify="left")
        for column in ("model", "$/1M chars", "gens", "chars", "hits", "hit %", "cost $", "saved $"):
            by_model.add_column(column, justify="left" if column == "model" else "right")
        for m in models:
            ratio = m["cache_hit_ratio"]
            by_model.add_row(
                m["model"], f"{prices.get(m['model'], prices['tts-1']):g}", str(m["generations"]),
                str(m["characters"]), str(m["cache_hits"]), "-" if ratio is None else f"{ratio:.0%}",
                f"{m['estimated_cost_usd']:.2f}", f"{m['saved_cost_usd']:.2f}",
            )  # fmt: skip
        console.print(by_model)
    ratio = totals["cache_hit_ratio"]
    console.print(
        f"cache hit ratio {'-' if ratio is None else f'{ratio:.0%}'}; today (UTC): "
        f"{totals['generated_today']} generations, {totals['characters_today']} characters"
    )


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
    from speccyd.storage.database import PurgeFilter

    settings = settings_for(data_dir)
    age = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as e:
            fail(f"--older-than: {e}", 2)
    store = open_store(settings)
    try:
        user_id = None if user is None else find_user(store, user, "--user ")
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
        started = time.monotonic()
        removed = _purge_with_progress(store, settings, what, now, len(candidates))
    finally:
        store.close()
    if len(removed) <= LIST_REMOVED:
        for row in removed:
            typer.echo(f"removed {row.id} ({row.status}, user {row.user_id[:8]})")
    _purge_summary(removed, time.monotonic() - started)


# Up to this many removed files are listed one per line; beyond it, a progress bar and a summary only.
LIST_REMOVED = 20


def _purge_with_progress(store: Any, settings: Settings, what: Any, now: float, expected: int) -> list[Any]:
    from speccyd.generation.cleanup import purge as run_purge
    from speccyd.storage.blobs import Blobs

    blobs = Blobs(settings.audio_dir)
    if expected <= LIST_REMOVED:
        return list(run_purge(store, blobs, what, now))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("removing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # On stderr so a script reading stdout sees only the summary.
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("purge", total=expected)
        return list(run_purge(store, blobs, what, now, progress=lambda rows: bar.advance(task, len(rows))))


def removed_line(removed: list[Any]) -> str:
    return f"removed {len(removed)} files, {sum(r.size_bytes or 0 for r in removed) / 1_000_000:.1f} MB"


def _purge_summary(removed: list[Any], seconds: float) -> None:
    users: dict[str, int] = {}
    for row in removed:
        users[row.user_id] = users.get(row.user_id, 0) + 1
    typer.echo(removed_line(removed))
    if removed:
        most = ", ".join(f"{u[:8]} ({n})" for u, n in sorted(users.items(), key=lambda kv: -kv[1])[:5])
        typer.echo(f"  {len(users)} users: {most}{', ...' if len(users) > 5 else ''}; took {seconds:.1f}s")


@app.command()
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
    from speccyd.storage.database import StoreError

    settings = settings_for(data_dir)
    open_store(settings).close()  # fails clearly on a missing or unusable data dir
    try:
        report = run_backup(settings, dest, secrets=not no_secrets)
    except (BackupError, StoreError, OSError) as e:
        fail(f"backup failed: {e}")
    typer.echo(
        f"backed up {report.files} audio files ({report.bytes / 1_000_000:.1f} MB), the database and config"
        f"{' and secrets' if report.secrets else ' (no secrets)'} to {report.dest}"
    )
    if report.vanished:
        typer.echo(f"{report.vanished} files expired or were purged during the backup and are not in it")


@app.command()
def restore(
    src: Annotated[Path, typer.Argument(help="A backup directory or .tar.gz made by `speccyd backup`.")],
    data_dir: DataDir = None,
) -> None:
    """Check a backup's integrity and restore it into a new or empty data dir."""
    from speccyd.config.settings import default_data_dir
    from speccyd.storage.backup import BackupError
    from speccyd.storage.backup import restore as run_restore

    target = data_dir or default_data_dir()
    try:
        report = run_restore(src, target)
    except (BackupError, OSError) as e:
        fail(f"restore failed: {e}")
    typer.echo(f"restored {report.files} audio files ({report.bytes / 1_000_000:.1f} MB) into {report.data_dir}")
    if not report.secrets:
        typer.echo("the backup has no secrets: new ones are made at start; every user must sign in again")


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

    from speccyd.generation.speech import FORMATS

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

    from speccyd.cli.client import ClientError, SpeccyClient

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


@app.command()
def discover(
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=60, help="Seconds to listen for answers.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List the speccyd servers on the network (Bonjour), on the interfaces of `mdns_interfaces`."""
    import asyncio

    from speccyd.ops.discovery import browse

    settings = settings_for(data_dir)
    try:
        found = asyncio.run(browse(settings.mdns_interfaces, timeout))
    except OSError as e:
        fail(f"cannot browse mDNS: {e}")
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in found], indent=2))
        return
    if not found:
        typer.echo(f"no speccyd server answered within {timeout:g}s")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="speccyd servers")
    for column in ("name", "addresses", "port", "version", "tls", "fingerprint (SHA-256)"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(
            s.name, ", ".join(s.addresses), str(s.port), s.version or "?", "yes" if s.tls else "no", s.fingerprint or ""
        )
    Console().print(table)


# Register `speccyd users ...` and `speccyd service ...`; imported last because they use the helpers above.
from speccyd.cli import service, users  # noqa: E402

__all__ = ["app", "main", "service", "users"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
