"""HTTPS: `init --tls`, serving HTTPS only, and an app pinning the fingerprint it read from the TXT record."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import uuid
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from speccyd.cli import app
from speccyd.config.settings import SettingsError, load_settings
from speccyd.security.tls import fingerprint, host_names_and_addresses
from tests.mdns import Browser
from tests.server_process import LOOPBACK_MDNS, ServerProcess, settings_env


def init_tls(data_dir: Path, *extra: str) -> str:
    """Run `speccyd init --tls` and return the fingerprint it printed."""
    result = CliRunner().invoke(app, ["init", "--data-dir", str(data_dir), "--tls", *extra])
    assert result.exit_code == 0, result.output
    match = re.search(r"SHA-256 fingerprint: ([0-9a-f]{64})", result.output)
    assert match, result.output
    return match.group(1)


def test_init_tls_creates_pinnable_certificate(tmp_path: Path) -> None:
    """`init --tls` writes a cert for the host's names and addresses, a 0600 key, enables both, prints the pin."""
    data_dir = tmp_path / "data"
    printed = init_tls(data_dir)
    cert = x509.load_pem_x509_certificate((data_dir / "tls.crt").read_bytes())
    assert printed == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert (data_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    _, addresses = host_names_and_addresses()
    short = socket.gethostname().split(".")[0]
    assert {short, f"{short}.local"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address(a) for a in addresses} == set(sans.get_values_for_type(x509.IPAddress))
    settings = load_settings(data_dir, env={})
    assert settings.tls_cert == data_dir / "tls.crt"
    assert settings.tls_key == data_dir / "tls.key"


def test_init_tls_again_keeps_the_pinned_certificate(tmp_path: Path) -> None:
    """Running `init --tls` again keeps the certificate (apps stay pinned); `--new-cert` replaces it."""
    data_dir = tmp_path / "data"
    first = init_tls(data_dir)
    assert init_tls(data_dir) == first
    assert init_tls(data_dir, "--new-cert") != first


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    """Setting tls_cert without tls_key is a settings error naming both keys."""
    with pytest.raises(SettingsError, match="tls_cert and tls_key"):
        load_settings(tmp_path, {"tls_cert": "/etc/x.pem"}, env={})


def test_serve_with_missing_certificate_fails_clearly(tmp_path: Path) -> None:
    """A configured certificate that does not exist stops `serve` with a message naming the file, no traceback."""
    umask = os.umask(0o022)  # `serve` sets its process's umask; keep this test process's own
    os.umask(umask)
    try:
        result = CliRunner().invoke(
            app,
            ["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"],
            env={
                "SPECCY_HOST": "127.0.0.1",
                "SPECCY_MDNS": "off",
                "SPECCY_TLS_CERT": "missing.crt",
                "SPECCY_TLS_KEY": "k",
            },
        )
    finally:
        os.umask(umask)
    assert result.exit_code == 1
    assert f"tls_cert: {tmp_path / 'data' / 'missing.crt'} does not exist" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


async def test_app_pins_fingerprint_from_txt(tmp_path: Path, upstream_url: str) -> None:
    """A client that pins the TXT `fp` gets through; a different pin is refused; plain HTTP gets no answer."""
    data_dir = tmp_path / "data"
    printed = await asyncio.to_thread(init_tls, data_dir)
    name = f"tls-test-{uuid.uuid4().hex[:8]}"
    env = {**LOOPBACK_MDNS, "SPECCY_NAME": name}
    async with ServerProcess(data_dir, upstream_url, tmp_path / "log", env=env) as server:
        async with Browser() as browser:
            await server.start()
            info = await browser.wait_for(name)
        txt = info.decoded_properties
        assert txt["tls"] == "1"
        assert txt["fp"] == printed
        assert server.url.startswith("https://")
        url = f"https://127.0.0.1:{info.port}/healthz"
        async with aiohttp.ClientSession() as session:
            # What an app does on first use: trust exactly the certificate whose hash Bonjour announced.
            pinned = aiohttp.Fingerprint(bytes.fromhex(str(txt["fp"])))
            async with session.get(url, ssl=pinned) as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ok"
            with pytest.raises(aiohttp.ServerFingerprintMismatch):
                await session.get(url, ssl=aiohttp.Fingerprint(bytes(32)))
            # Without the pin, ordinary verification fails: the certificate is self-signed.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url, ssl=ssl.create_default_context())
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://127.0.0.1:{info.port}/healthz")
        assert await server.stop() == 0


def _issue(
    subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: str | None, ca: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    else:
        usage = dict.fromkeys(
            ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "encipher_only", "decipher_only"), False,
        )  # fmt: skip
        builder = builder.add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


async def test_ca_signed_certificate_chain(tmp_path: Path, upstream_url: str) -> None:
    """A "real" certificate (leaf + intermediate in one file) verifies by CA and name; `fp` is the leaf's."""
    root_key, root = _issue("Test Root CA", None, None, ca=True)
    mid_key, mid = _issue("Test Intermediate", root_key, "Test Root CA", ca=True)
    leaf_key, leaf = _issue("localhost", mid_key, "Test Intermediate", ca=False)
    (tmp_path / "chain.pem").write_bytes(leaf.public_bytes(Encoding.PEM) + mid.public_bytes(Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    assert fingerprint(tmp_path / "chain.pem") == hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    env = settings_env(tls_cert=tmp_path / "chain.pem", tls_key=tmp_path / "leaf.key")
    async with ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", env=env) as server:
        await server.start()
        verify = ssl.create_default_context(cadata=root.public_bytes(Encoding.PEM).decode())
        # Ordinary verification by CA and host name, as the apps do for a server with a public certificate.
        url = f"https://localhost:{server.port}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url, ssl=verify) as response:
            assert response.status == 200
        assert await server.stop() == 0
