"""`speccyd serve`: run the server in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from speccyd.cli.common import DataDir, fail, settings_for
from speccyd.config.text import describe


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
    from speccyd.storage.datadir import DataDirBusy
    from speccyd.storage.errors import StoreError

    try:
        run_server(settings)
    except (StoreError, SecretsError, TLSError, DataDirBusy) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot serve on {settings.host}:{settings.port}: {describe(e)}")
