"""`speccyd init`: the data dir, its secrets and database, and (with --tls) a certificate."""

from __future__ import annotations

from typing import Annotated

import typer

from speccyd.cli.common import DataDir, fail, settings_for
from speccyd.config.settings import Settings
from speccyd.config.text import describe


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
    import asyncio

    from speccyd.security.provision import init_data_dir
    from speccyd.storage.datadir import DataDirBusy, is_initialized
    from speccyd.storage.errors import StoreError

    settings = settings_for(data_dir)
    if force and is_initialized(settings) and not yes:
        typer.confirm("Regenerate the server secrets? Every device will have to sign in again", abort=True)
    try:
        report = asyncio.run(init_data_dir(settings, force=force))
    except DataDirBusy as e:
        fail(f"cannot regenerate the secrets: {e} (a running server keeps the old secrets until it stops)")
    except (StoreError, OSError) as e:
        fail(describe(e))
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
        fail(f"cannot set up TLS: {describe(e)}")
    typer.echo(f"enabled HTTPS in {settings.config_path} (restart the server to use it)")
    typer.echo(f"SHA-256 fingerprint: {digest}")
