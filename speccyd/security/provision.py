"""A data dir ready to serve: its layout, a migrated database, and the server secrets; rotating them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from speccyd.config.settings import Settings
from speccyd.security.crypto import SecretsError, ServerSecrets
from speccyd.storage.database import Database, open_database
from speccyd.storage.datadir import prepare_layout


@dataclass
class InitReport:
    data_dir: Path
    created: list[str] = field(default_factory=list)
    rotated_users: int | None = None


async def init_data_dir(settings: Settings, *, force: bool = False) -> InitReport:
    """Create what is missing; change nothing that exists unless `force` rotates the secrets."""
    report = InitReport(settings.data_dir, prepare_layout(settings))
    db_existed = settings.db_path.exists()
    db = open_database(settings)
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
            report.rotated_users = await rotate_secrets(db, settings, old)
    finally:
        await db.close()
    return report


async def rotate_secrets(db: Database, settings: Settings, old: ServerSecrets) -> int:
    """New secrets, re-wrapping every stored key so users keep their ids; every session ends."""
    new = ServerSecrets.generate()
    rewrapped = []
    for user_id, blob in await db.user_keys():
        key = old.decrypt_key(blob, user_id)
        if key is not None:
            rewrapped.append((user_id, new.key_lookup_hash(key), new.encrypt_key(key, user_id)))
    # The window between these two writes is one fsync and two renames; a crash inside it leaves stored
    # keys unreadable, and their users get a new id at their next sign-in (documented in README).
    await db.rewrap_user_keys(rewrapped)
    new.save(settings.secrets_dir)
    return len(rewrapped)
