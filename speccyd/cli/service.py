"""`speccyd service ...`: install or remove the systemd/launchd service file (a sub-command group of the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from speccyd.cli.common import DataDir, fail

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


def _service_plan(system: bool | None, data_dir: Path | None, platform: str | None) -> Any:
    import os

    from speccyd.ops.unitfiles import current_platform, plan_install, running_command

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
    from speccyd.ops.unitfiles import install

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
