"""HTTPS: the server's SSL context, a self-signed certificate for `init --tls`, and its fingerprint."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from speccyd.config.settings import Settings
from speccyd.config.text import describe
from speccyd.security.crypto import write_secret_file

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# Ten years: a self-signed certificate is pinned by fingerprint, so expiry only forces every app to re-pin.
VALID_DAYS = 3650


class TLSError(Exception):
    """The certificate or key cannot be used; the message names the file."""


@dataclass(frozen=True)
class NewCertificate:
    cert_path: Path
    key_path: Path
    fingerprint: str
    names: list[str]


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the leaf certificate's DER bytes, lowercase hex: what the apps pin and mDNS advertises."""
    from cryptography import x509

    try:
        data = cert_path.read_bytes()
    except OSError as e:
        raise TLSError(f"cannot read certificate {cert_path}: {e.strerror}") from None
    try:
        # The first certificate of a chain file is the leaf, the one a client sees first.
        cert = x509.load_pem_x509_certificates(data)[0]
    except ValueError as e:
        raise TLSError(f"{cert_path} is not a PEM certificate: {e}") from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The SSL context for the listening socket, or None when TLS is off."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for key, path in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        if not path.is_file():
            raise TLSError(f"{key}: {path} does not exist (run `speccyd init --tls`, or fix config.toml)")
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as e:
        raise TLSError(
            f"cannot load tls_cert {settings.tls_cert} / tls_key {settings.tls_key}: {describe(e)}"
        ) from None
    return context


def host_names_and_addresses() -> tuple[list[str], list[str]]:
    """This machine's names (short, `.local`, fully qualified) and its non-loopback IP addresses."""
    import ifaddr

    short = socket.gethostname().split(".")[0] or "localhost"
    names = [short, f"{short}.local"]
    fqdn = socket.getfqdn()
    if "." in fqdn and fqdn not in names and not fqdn.startswith("localhost"):
        names.append(fqdn)
    addresses: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(raw.split("%")[0])
            if not address.is_loopback and not address.is_link_local and str(address) not in addresses:
                addresses.append(str(address))
    return names, addresses


def create_self_signed(directory: Path, names: list[str], addresses: list[str]) -> NewCertificate:
    """A self-signed ECDSA P-256 certificate for `names` and `addresses`; the key is written 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a client clock a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / KEY_FILE
    cert_path = directory / CERT_FILE
    write_secret_file(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return NewCertificate(cert_path, key_path, fingerprint(cert_path), names + addresses)
