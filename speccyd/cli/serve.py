"""`speccyd serve`: run the server in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from speccyd.cli.common import DataDir, fail, settings_for
from speccyd.config.text import describe

_EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _catch_early_signals() -> list[int]:
    """Record SIGTERM, SIGINT and SIGHUP from now until the server's event loop takes them over.

    As PID 1 (a container without an init) the kernel drops every signal whose disposition is the default,
    so without a handler a `docker stop` during the second of imports and start-up is ignored and Docker
    kills the container 10 s later. Recorded, a stop is acted on as soon as the loop runs (before any socket
    is served) and a reload once serving. Elsewhere it turns a Ctrl-C during start-up into a clean exit; a
    second one aborts start-up at once.
    """
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP and any(sig != signal.SIGHUP for sig in received):
            raise SystemExit(128 + signum)  # asked twice (Ctrl-C again): abort start-up where it is
        received.append(signum)

    for sig in _EARLY_SIGNALS:
        signal.signal(sig, record)
    # A launcher that is PID 1 (the image's entrypoint) blocks these before it execs us: a blocked signal is
    # kept pending instead of dropped, and arrives here, now that there is a handler for it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _EARLY_SIGNALS)
    return received


def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.", show_default="0.0.0.0")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one.", show_default="8420")] = None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C (on sockets from systemd when it passes them)."""
    early_signals = _catch_early_signals()  # first: nothing before this may take long
    settings = settings_for(data_dir, host=host, port=port)
    os.umask(0o077)  # everything the server writes (audio, database, logs it may create) is private
    from speccyd.security.tls import TLSError, server_context

    try:
        server_context(settings)  # a bad certificate is reported at once, before the server's heavy imports
    except TLSError as e:
        fail(str(e))
    if any(sig != signal.SIGHUP for sig in early_signals):  # before a second of imports that would serve nothing
        typer.echo("stop requested during start-up; exiting before serving", err=True)
        return
    from speccyd.ops.systemd import SocketActivationError
    from speccyd.security.crypto import SecretsError
    from speccyd.server import serve as run_server
    from speccyd.storage.datadir import DataDirBusy
    from speccyd.storage.errors import StoreError

    try:
        run_server(settings, early_signals)
    except (StoreError, SecretsError, TLSError, SocketActivationError, DataDirBusy) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot serve on {settings.host}:{settings.port}: {describe(e)}")
