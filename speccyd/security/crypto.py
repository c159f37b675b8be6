"""Server secrets on disk, and what is derived from them: key lookup, key encryption, signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SESSION_KEY_FILE = "session.key"
ENCRYPTION_KEY_FILE = "encryption.key"
_KEY_BYTES = 32
_NONCE_BYTES = 12  # AES-GCM's standard nonce size; random nonces are safe far beyond our key count


class SecretsError(Exception):
    """Secrets are missing or unreadable."""


def _subkey(master: bytes, label: str) -> bytes:
    # One master secret per purpose on disk; distinct subkeys so a signature of one kind never
    # validates as another (a file URL signature is never a JWT signature).
    return hmac.new(master, label.encode(), hashlib.sha256).digest()


def write_secret_file(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte, so a crash never leaves a half key."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_secret() -> bytes:
    return secrets.token_bytes(_KEY_BYTES)


class ServerSecrets:
    """The two secrets on disk and the subkeys derived from them (once: some are used on every request)."""

    def __init__(self, session_key: bytes, encryption_key: bytes) -> None:
        self.session_key = session_key
        self.encryption_key = encryption_key
        self.jwt_key = _subkey(session_key, "speccyd jwt v1")
        self.url_key = _subkey(session_key, "speccyd file url v1")
        self._lookup_key = _subkey(encryption_key, "speccyd key lookup v1")
        self._aead = AESGCM(_subkey(encryption_key, "speccyd key encryption v1"))

    @classmethod
    def load(cls, directory: Path) -> ServerSecrets:
        return cls.load_from(directory / SESSION_KEY_FILE, directory / ENCRYPTION_KEY_FILE)

    @classmethod
    def load_from(cls, session_path: Path, encryption_path: Path) -> ServerSecrets:
        directory = session_path.parent
        try:
            session = session_path.read_bytes()
            encryption = encryption_path.read_bytes()
        except OSError as e:
            raise SecretsError(f"cannot read secrets in {directory}: {e.strerror}; run `speccyd init`") from None
        if len(session) != _KEY_BYTES or len(encryption) != _KEY_BYTES:
            raise SecretsError(f"secrets in {directory} are damaged; run `speccyd init --force`")
        return cls(session, encryption)

    @classmethod
    def generate(cls) -> ServerSecrets:
        return cls(new_secret(), new_secret())

    def save(self, directory: Path) -> None:
        self.save_as(directory / SESSION_KEY_FILE, directory / ENCRYPTION_KEY_FILE)

    def save_as(self, session_path: Path, encryption_path: Path) -> None:
        write_secret_file(session_path, self.session_key)
        write_secret_file(encryption_path, self.encryption_key)

    def promote(self, session_path: Path, encryption_path: Path, directory: Path) -> None:
        """Rename secrets saved with `save_as` into place as the directory's secrets."""
        os.replace(session_path, directory / SESSION_KEY_FILE)
        os.replace(encryption_path, directory / ENCRYPTION_KEY_FILE)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the renames are on disk before anyone is told the rotation is done
        finally:
            os.close(dir_fd)

    @property
    def fingerprint(self) -> str:
        """Names these secrets without revealing them (a rotation records which ones the stored keys use)."""
        return hmac.new(self.encryption_key, b"speccyd secrets fingerprint v1", hashlib.sha256).hexdigest()[:32]

    def key_lookup_hash(self, openai_key: str) -> str:
        """HMAC-SHA256 of an OpenAI key: finds the user without storing anything reversible."""
        return hmac.digest(self._lookup_key, openai_key.encode(), "sha256").hex()

    def encrypt_key(self, openai_key: str, user_id: str) -> bytes:
        """AES-GCM with the user id as associated data, so a ciphertext cannot be moved to another user."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, openai_key.encode(), user_id.encode())

    def decrypt_key(self, blob: bytes, user_id: str) -> str | None:
        aead = self._aead
        try:
            return aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], user_id.encode()).decode()
        except (InvalidTag, ValueError):
            return None

    def sign_file_url(self, file_id: str, user_id: str, expires: int) -> str:
        mac = hmac.digest(self.url_key, f"{file_id}\n{user_id}\n{expires}".encode(), "sha256")
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check_file_url(self, file_id: str, user_id: str, expires: int, signature: str) -> bool:
        # compare_digest raises TypeError for a str that is not ASCII: a signature ours never is.
        if not signature.isascii():
            return False
        return hmac.compare_digest(self.sign_file_url(file_id, user_id, expires), signature)
