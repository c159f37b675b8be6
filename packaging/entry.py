"""The frozen executable's entry point (PyInstaller runs this file as __main__)."""

import multiprocessing
import os
import ssl
import sys

from speccyd.cli import main

# Where Linux distributions keep their CA bundle (Debian, Fedora/RHEL, openSUSE, Alpine, macOS's cert.pem).
SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)


def use_bundled_ca_if_none() -> None:
    """HTTPS to OpenAI needs CAs: the system's when it has some (they get updates), else certifi's bundle."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR") or sys.platform in ("darwin", "win32"):
        return  # macOS and Windows use the OS trust store (truststore), which always exists
    if os.path.isfile(ssl.get_default_verify_paths().openssl_cafile) or any(map(os.path.isfile, SYSTEM_CA_FILES)):
        return
    import certifi

    os.environ["SSL_CERT_FILE"] = certifi.where()


if __name__ == "__main__":
    # A no-op unless frozen; there, a child started by multiprocessing must not run the CLI again.
    multiprocessing.freeze_support()
    use_bundled_ca_if_none()
    main()
