"""The data directory's layout: private directories and the commented config.toml, created when missing."""

from __future__ import annotations

from speccyd.config.settings import Settings, config_template
from speccyd.storage.blobs import make_private_dir


def is_initialized(settings: Settings) -> bool:
    return settings.db_path.exists() and settings.secrets_dir.is_dir()


def prepare_layout(settings: Settings) -> list[str]:
    """Create the data dir, secrets/ and audio/ (0700) and config.toml (0600) if missing; what was created."""
    created = []
    for directory in (settings.data_dir, settings.secrets_dir, settings.audio_dir):
        if not directory.exists():
            created.append(str(directory))
        make_private_dir(directory)
    if not settings.config_path.exists():
        settings.config_path.write_text(config_template())
        settings.config_path.chmod(0o600)
        created.append(str(settings.config_path))
    return created
