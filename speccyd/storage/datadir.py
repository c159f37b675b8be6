"""The data directory: layout, first-run initialisation, and secret rotation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from speccyd.config.settings import Settings, config_template
from speccyd.security.crypto import SecretsError, ServerSecrets
from speccyd.storage.blobs import make_private_dir
from speccyd.storage.database import Store


@dataclass
class InitReport:
    data_dir: Path
    created: list[str] = field(default_factory=list)
    rotated_users: int | None = None


def is_initialized(settings: Settings) -> bool:
    return settings.db_path.exists() and settings.secrets_dir.is_dir()


def init_data_dir(settings: Settings, *, force: bool = False) -> InitReport:
    """Create what is missing; change nothing that exists unless `force` rotates the secrets."""
    report = InitReport(settings.data_dir)
    for directory in (settings.data_dir, settings.secrets_dir, settings.audio_dir):
        if not directory.exists():
            report.created.append(str(directory))
        make_private_dir(directory)
    if not settings.config_path.exists():
        settings.config_path.write_text(config_template())
        settings.config_path.chmod(0o600)
        report.created.append(str(settings.config_path))

    db_existed = settings.db_path.exists()
    store = Store(settings.db_path)
    try:
        if not db_existed:
            report.created.append(str(settings.db_path))
        try:
            old = ServerSecrets.load(settings.secrets_dir)
        except SecretsError:
            old = None
        if old is None:
            ServerSecrets.generate().save(settings.secrets_dir)
            report.created.append(str(settings.secrets_dir / "*.key"))
        elif force:
            report.rotated_users = rotate_secrets(store, settings, old)
    finally:
        store.close()
    return report


def rotate_secrets(store: Store, settings: Settings, old: ServerSecrets) -> int:
    """New secrets, re-wrapping every stored key so users keep their ids; every session ends."""
    new = ServerSecrets.generate()
    rewrapped = []
    for user_id, blob in store.user_keys():
        key = old.decrypt_key(blob, user_id)
        if key is not None:
            rewrapped.append((user_id, new.key_lookup_hash(key), new.encrypt_key(key, user_id)))
    # The window between these two writes is one fsync and two renames; a crash inside it leaves stored
    # keys unreadable, and their users get a new id at their next sign-in (documented in README).
    store.rewrap_user_keys(rewrapped)
    new.save(settings.secrets_dir)
    return len(rewrapped)
