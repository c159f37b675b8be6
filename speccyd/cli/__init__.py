"""The `speccyd` command: options become Settings, then a core function does the work.

One module per command or command group; `common` holds what they share, and nothing here is imported by
them, so there are no cycles. Heavy modules (aiohttp, openai, the server) are imported inside the commands
that need them, so that `speccyd --help` and `speccyd usage` start quickly.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from speccyd import __version__
from speccyd.cli import backups, discover, health, imports, init, purge, say, serve, service, usage, users

app = typer.Typer(
    name="speccyd",
    help="Self-hosted text-to-speech server for the Speccy apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rendering it with rich imports ~90 ms of modules, a third of the 300 ms start budget.
    rich_markup_mode=None,
)


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


for command in (init.init, serve.serve, usage.usage, purge.purge, backups.backup, backups.restore, say.say,
                discover.discover, health.healthcheck):  # fmt: skip
    app.command()(command)
app.command("import")(imports.import_audio)
app.add_typer(users.users_app, name="users")
app.add_typer(service.service_app, name="service")


def main() -> None:
    """The console script: the command-line parser's own errors become one line too (a usage error, an
    aborted confirmation). Typer carries its own copy of click, so its exception classes are typer's."""
    from typer._click import exceptions as click

    # The image's entrypoint, as PID 1, execs us with the stop signals blocked (packaging/docker-entrypoint):
    # Ctrl-C works again at once (Python has its handler); `serve` takes SIGTERM and SIGHUP once it has its own.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except click.NoArgsIsHelpError as e:
        e.show()  # `speccyd` alone, or a group alone: its help, and click's exit status, as before
        sys.exit(e.exit_code)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "speccyd"
        typer.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("error: aborted; nothing was changed", err=True)
        sys.exit(1)
    except click.ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
