"""A data dir ready to serve: its layout, a migrated database, and the server secrets; rotating them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from speccyd.config.settings import Settings
from speccyd.security.crypto import ENCRYPTION_KEY_FILE, SESSION_KEY_FILE, SecretsError, ServerSecrets
from speccyd.storage.database import Database, open_database
from speccyd.storage.datadir import data_dir_lock, prepare_layout

log = logging.getLogger(__name__)

# The new secrets of a rotation are written under these names first, and renamed into place only once the
# database holds the keys re-encrypted under them (see rotate_secrets).
NEXT_SUFFIX = ".next"
# meta key: the fingerprint of the secrets the stored keys are encrypted under.
SECRETS_FINGERPRINT = "secrets_fingerprint"


@dataclass
class InitReport:
    data_dir: Path
    created: list[str] = field(default_factory=list)
    rotated_users: int | None = None


async def init_data_dir(settings: Settings, *, force: bool = False) -> InitReport:
    """Create what is missing; change nothing that exists unless `force` rotates the secrets.

    Rotating takes the data dir's lock: refused (DataDirBusy) while a server uses the data dir, since that
    server keeps the old secrets in memory and would go on honouring old sessions and signed URLs, and sign
    a user in under a new id.
    """
    report = InitReport(settings.data_dir, prepare_layout(settings))
    with data_dir_lock(settings.data_dir) if force else contextlib.nullcontext():
        db_existed = settings.db_path.exists()
        db = open_database(settings)
        try:
            if not db_existed:
                report.created.append(str(settings.db_path))
            await finish_interrupted_rotation(db, settings.secrets_dir)
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


def _next_paths(directory: Path) -> tuple[Path, Path]:
    return directory / (SESSION_KEY_FILE + NEXT_SUFFIX), directory / (ENCRYPTION_KEY_FILE + NEXT_SUFFIX)


async def rotate_secrets(db: Database, settings: Settings, old: ServerSecrets) -> int:
    """New secrets, re-wrapping every stored key so users keep their ids; every session ends.

    Crash-safe in three steps: the new secrets are written beside the old ones (*.next); one transaction
    re-encrypts every key and records the new secrets' fingerprint; then the new files are renamed into place.
    A crash before the transaction leaves the old secrets in force; after it, the next start (or `init`)
    finishes the renames (finish_interrupted_rotation). Either way no stored key becomes unreadable, so no
    user is ever split into a second id.
    """
    new = ServerSecrets.generate()
    rewrapped = []
    for user_id, blob in await db.user_keys():
        key = old.decrypt_key(blob, user_id)
        if key is not None:
            rewrapped.append((user_id, new.key_lookup_hash(key), new.encrypt_key(key, user_id)))
    session_next, encryption_next = _next_paths(settings.secrets_dir)
    new.save_as(session_next, encryption_next)
    await db.rewrap_user_keys(rewrapped, (SECRETS_FINGERPRINT, new.fingerprint))
    new.promote(session_next, encryption_next, settings.secrets_dir)
    return len(rewrapped)


async def finish_interrupted_rotation(db: Database, directory: Path) -> None:
    """A rotation cut off by a crash: finish it if the database already holds the keys under the new secrets,
    else forget the new secrets (the old ones are still the ones in force)."""
    session_next, encryption_next = _next_paths(directory)
    if not session_next.exists() and not encryption_next.exists():
        return
    try:
        pending = ServerSecrets.load_from(session_next, encryption_next)
    except SecretsError:
        pending = None
    if pending is not None and await db.get_meta(SECRETS_FINGERPRINT) == pending.fingerprint:
        pending.promote(session_next, encryption_next, directory)
        log.warning("finished a secrets rotation that a crash had interrupted")
        return
    session_next.unlink(missing_ok=True)
    encryption_next.unlink(missing_ok=True)
    log.warning("discarded the new secrets of a rotation that a crash interrupted; the old secrets stay")
