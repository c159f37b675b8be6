"""`speccyd healthcheck`: ask the local server's /healthz, for Docker's HEALTHCHECK and other supervisors.

It imports nothing heavy (no aiohttp, no server), so a check every few seconds costs what `speccyd --help` does.
"""

from __future__ import annotations

from typing import Annotated

import typer

from speccyd.cli.common import DataDir, settings_for

# Well under Docker's own --timeout (5 s in the image), so a hung server is reported by us, not killed.
DEFAULT_TIMEOUT = 4.0


def local_health_url(host: str, port: int, tls: bool) -> str:
    """The /healthz URL of a server bound to host:port, asked on loopback when it listens on a wildcard."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/healthz"


def healthcheck(
    data_dir: DataDir = None,
    url: Annotated[
        str | None, typer.Option(help="Ask this URL instead (e.g. with a socket from systemd on another port).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = DEFAULT_TIMEOUT,
) -> None:
    """Exit 0 when the local server's /healthz answers 200, else 1; print what it said."""
    import ssl
    import urllib.error
    import urllib.request

    if url is None:
        settings = settings_for(data_dir)
        if settings.port == 0:
            typer.echo("port = 0: the port is only known to the running server; pass --url", err=True)
            raise typer.Exit(2)
        url = local_health_url(settings.host, settings.port, settings.tls_cert is not None)
    context = None
    if url.startswith("https:"):
        # Our own server on our own address: liveness, not identity (the apps pin the certificate).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310 (ours)
            typer.echo(f"{response.status} {response.read(4000).decode(errors='replace')}")
            raise typer.Exit(0 if response.status == 200 else 1)
    except urllib.error.HTTPError as e:  # 503: a check failed, and its body names which
        typer.echo(f"{e.code} {e.read(4000).decode(errors='replace')}")
    except (OSError, ValueError) as e:
        typer.echo(f"{url}: {e}")
    raise typer.Exit(1)
