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
    tls: Annotated[
        bool, typer.Option("--tls", help="Create a self-signed certificate and serve HTTPS from now on.")
    ] = False,
    new_cert: Annotated[
        bool, typer.Option("--new-cert", help="With --tls: replace an existing certificate (apps must re-pin).")
    ] = False,
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
    if tls:
        _init_tls(settings, renew=new_cert)
    elif not report.created and report.rotated_users is None:
        typer.echo(f"{settings.data_dir} is already initialised; nothing changed")


def _init_tls(settings: Settings, renew: bool) -> None:
    from speccyd.settings import set_config_values
    from speccyd.tls import CERT_FILE, KEY_FILE, TLSError, create_self_signed, fingerprint, host_names_and_addresses

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
    from speccyd.tls import TLSError, server_context

    try:
        server_context(settings)  # a bad certificate is reported at once, before the server's heavy imports
    except TLSError as e:
        fail(str(e))
    from speccyd.crypto import SecretsError
    from speccyd.server import serve as run_server
    from speccyd.store import StoreError

    try:
        run_server(settings)
    except (StoreError, SecretsError, TLSError) as e:
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
def discover(
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=60, help="Seconds to listen for answers.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List the speccyd servers on the network (Bonjour), on the interfaces of `mdns_interfaces`."""
    import asyncio

    from speccyd.discovery import browse

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


service_app = typer.Typer(
    help="Start speccyd at boot with systemd (Linux) or launchd (macOS).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(service_app, name="service")

Scope = Annotated[
    bool | None,
    typer.Option(
        "--system/--user", help="A boot-time system service, or one for your user.", show_default="--system as root"
    ),
]
Platform = Annotated[str | None, typer.Option("--platform", hidden=True, help="systemd or launchd (tests).")]


def _service_plan(system: bool | None, data_dir: Path | None, platform: str | None) -> Any:
    import os

    from speccyd.service import current_platform, plan_install, running_command

    if system is None:
        system = os.geteuid() == 0
    try:
        return plan_install(platform or current_platform(), system, data_dir, running_command())
    except ValueError as e:
        fail(str(e), 2)


@service_app.command("install")
def service_install(
    system: Scope = None,
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the file instead of writing it.")] = False,
    platform: Platform = None,
) -> None:
    """Write the service file for this machine, pointing at this speccyd and data dir."""
    from speccyd.service import install

    plan = _service_plan(system, data_dir, platform)
    if dry_run:
        # The file alone on stdout (`... --dry-run > speccyd.service` works); everything else on stderr.
        typer.echo(plan.text, nl=False)
        typer.echo(f"# would write {plan.path}", err=True)
    else:
        try:
            install(plan)
        except OSError as e:
            fail(f"cannot write {plan.path}: {e.strerror or e} (a system service needs root)")
        typer.echo(f"wrote {plan.path}")
    for note in plan.notes:
        typer.echo(f"# {note}", err=dry_run)
    typer.echo("# to start it now and at every boot:", err=dry_run)
    for command in plan.enable:
        typer.echo(command, err=dry_run)


@service_app.command("uninstall")
def service_uninstall(
    system: Scope = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    platform: Platform = None,
) -> None:
    """Remove the service file written by `service install` (the data dir is kept)."""
    plan = _service_plan(system, None, platform)
    typer.echo("# if it is running, stop it and keep it from starting at boot:")
    for command in plan.disable:
        typer.echo(command)
    if not plan.path.exists():
        typer.echo(f"{plan.path} does not exist; nothing to remove")
        return
    if dry_run:
        typer.echo(f"would remove {plan.path}")
        return
    try:
        plan.path.unlink()
    except OSError as e:
        fail(f"cannot remove {plan.path}: {e.strerror or e}")
    typer.echo(f"removed {plan.path}")


def _iso(timestamp: float) -> str:
    from speccyd.timeutil import iso

    return iso(timestamp) or ""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
