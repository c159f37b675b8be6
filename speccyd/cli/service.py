"""`speccyd service ...`: install or remove the systemd/launchd service file (a sub-command group of the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from speccyd.cli.common import DataDir, fail, settings_for

service_app = typer.Typer(
    help="Start speccyd at boot with systemd (Linux) or launchd (macOS).", no_args_is_help=True, rich_markup_mode=None
)

Scope = Annotated[
    bool | None,
    typer.Option(
        "--system/--user", help="A boot-time system service, or one for your user.", show_default="--system as root"
    ),
]
Platform = Annotated[str | None, typer.Option("--platform", hidden=True, help="systemd or launchd (tests).")]


Socket = Annotated[
    bool,
    typer.Option(
        "--socket/--no-socket",
        help="systemd: a socket unit holds the port, so restarts queue connections instead of refusing them.",
    ),
]


def _service_plan(system: bool | None, data_dir: Path | None, platform: str | None, socket: bool = True) -> Any:
    import os

    from speccyd.ops.unitfiles import current_platform, plan_install, running_command

    if system is None:
        system = os.geteuid() == 0
    listen = None
    if socket:
        settings = settings_for(data_dir)  # host and port as configured (default 0.0.0.0:8420)
        listen = (settings.host, settings.port)
    try:
        return plan_install(platform or current_platform(), system, data_dir, running_command(), listen)
    except ValueError as e:
        fail(str(e), 2)


@service_app.command("install")
def service_install(
    system: Scope = None,
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the files instead of writing them.")] = False,
    socket: Socket = True,
    platform: Platform = None,
) -> None:
    """Write the service files for this machine, pointing at this speccyd and data dir."""
    from speccyd.ops.unitfiles import install

    plan = _service_plan(system, data_dir, platform, socket)
    if dry_run:
        # The files on stdout, everything else on stderr. One file alone (`--dry-run > speccyd.service`
        # works); several each after a "# PATH" comment line, so each part is still a valid unit file.
        for unit in plan.files:
            if len(plan.files) > 1:
                typer.echo(f"# {unit.path}")
            typer.echo(unit.text, nl=False)
            typer.echo(f"# would write {unit.path}", err=True)
    else:
        try:
            install(plan)
        except OSError as e:
            fail(f"cannot write {e.filename or plan.path}: {e.strerror or e} (a system service needs root)")
        for unit in plan.files:
            typer.echo(f"wrote {unit.path}")
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
    from speccyd.ops.unitfiles import SOCKET_NAME, UNIT_NAME

    plan = _service_plan(system, None, platform, socket=False)
    paths = [plan.path]
    stop = plan.disable
    socket_unit = plan.path.with_name(SOCKET_NAME)
    if plan.path.name == UNIT_NAME and socket_unit.exists():  # systemd, installed with its socket unit
        paths.append(socket_unit)
        stop = [command.replace(UNIT_NAME, f"{SOCKET_NAME} {UNIT_NAME}") for command in stop]
    typer.echo("# if it is running, stop it and keep it from starting at boot:")
    for command in stop:
        typer.echo(command)
    present = [path for path in paths if path.exists()]
    if not present:
        typer.echo(f"{plan.path} does not exist; nothing to remove")
        return
    for path in present:
        if dry_run:
            typer.echo(f"would remove {path}")
            continue
        try:
            path.unlink()
        except OSError as e:
            fail(f"cannot remove {path}: {e.strerror or e}")
        typer.echo(f"removed {path}")
