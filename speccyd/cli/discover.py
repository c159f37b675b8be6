"""`speccyd discover`: the speccyd servers that answer on mDNS."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from speccyd.cli.common import DataDir, fail, settings_for
from speccyd.config.text import describe


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
        fail(f"cannot browse mDNS: {describe(e)}")
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
