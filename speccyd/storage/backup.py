"""`speccyd backup` and `speccyd restore`: a consistent snapshot of a running server, and putting it back.

A backup is a directory (or the same tree in a .tar.gz):

    manifest.json      what is inside, written last
    speccyd.db         SQLite's online backup API: a consistent copy while the server keeps writing
    audio/xx/<id>.<fmt> every file that is ready in that copy (files are never changed in place, only
                       renamed into place and deleted, so copying them after the snapshot is safe)
    config.toml        if present
    tls.crt            the HTTPS certificate, when the server serves HTTPS (so a restore keeps its pin)
    tls.key            its private key, with the secrets
    secrets/           unless --no-secrets: without them stored keys cannot be decrypted and every
                       session ends, but the backup holds nothing that unlocks anyone's OpenAI key

Everything is private from its first byte (files 0600, directories 0700), whatever the umask: each file is
created with its mode, never chmod'ed afterwards. Restoring is storage/restore.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from speccyd import __version__
from speccyd.config.settings import CONFIG_FILE, Settings
from speccyd.media.formats import FORMATS
from speccyd.storage.blobs import make_private_dir
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.maintenance import forget_files, online_backup, ready_files, schema_version

MANIFEST = "manifest.json"
FORMAT = 1
DB_NAME = "speccyd.db"
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"  # as `init --tls` names them in a data dir
SECRET_FILES = ("session.key", "encryption.key")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_FILE_ID = re.compile(r"[0-9a-f]{32}")
# Names that say "a file of some archive format": `backup x.zip` must not quietly become a directory x.zip.
_FILE_SUFFIX = re.compile(r"\.(?=[a-z0-9]*[a-z])[a-z0-9]{1,5}$", re.IGNORECASE)

Progress = Callable[[int, int], None]  # (done, total) audio files


class BackupError(Exception):
    """The backup cannot be written or read back; the message says why."""


@dataclass(frozen=True)
class BackupReport:
    dest: Path
    files: int
    bytes: int
    secrets: bool
    vanished: int  # ready at snapshot time but deleted (expired, purged) before they were copied


@dataclass(frozen=True)
class RestoreReport:
    data_dir: Path
    files: int
    bytes: int
    secrets: bool


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def create_private(path: Path) -> BinaryIO:
    """A new file, 0600 from its first byte (the umask can only narrow it), never following a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


def copy_private(source: Path, target: Path) -> None:
    """Copy a regular file (never through a link) into a new 0600 file."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src, create_private(target) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def write_private(path: Path, data: bytes) -> None:
    with create_private(path) as f:
        f.write(data)


def _audio_path(root: Path, file_id: str, fmt: str) -> Path:
    # The ids and formats come from the backup's database: a crafted one must not name "../../etc/x".
    if not _FILE_ID.fullmatch(file_id) or fmt not in FORMATS:
        raise BackupError(f"the database names a file that cannot be a speccyd file: {file_id!r}.{fmt!r}")
    return root / "audio" / file_id[:2] / f"{file_id}.{fmt}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup(settings: Settings, dest: Path, *, secrets: bool = True, progress: Progress | None = None) -> BackupReport:
    """Write a snapshot of the data dir to `dest` (a new directory, or a file ending .tar.gz)."""
    dest = dest.expanduser().absolute()
    archive = is_archive(dest)
    if not archive and _FILE_SUFFIX.search(dest.name) and not dest.is_dir():
        raise BackupError(
            f"{dest.name}: a backup is a directory (a name without a file suffix) or a .tar.gz (or .tgz) archive"
        )
    if archive:
        if dest.exists():
            raise BackupError(f"{dest} already exists; choose a new file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=".speccyd-backup-", dir=dest.parent))
    else:
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise BackupError(f"{dest} exists and is not an empty directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.mkdir(mode=0o700)
        make_private_dir(dest)
        root = dest
    try:
        report = _write_tree(settings, root, secrets, progress)
        if archive:
            partial = dest.with_name(dest.name + ".part")
            partial.unlink(missing_ok=True)  # a leftover of an interrupted backup
            # Level 1: compressed audio (mp3, opus, aac) does not shrink, so higher levels only cost time;
            # the database still compresses well at level 1.
            with create_private(partial) as out, tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
                for item in sorted(root.iterdir()):
                    tar.add(item, arcname=item.name)
            os.replace(partial, dest)
        return BackupReport(dest, report.files, report.bytes, secrets, report.vanished)
    except BaseException:
        if archive:
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        if archive:
            shutil.rmtree(root, ignore_errors=True)


def _write_tree(settings: Settings, root: Path, secrets: bool, progress: Progress | None) -> BackupReport:
    create_private(root / DB_NAME).close()  # SQLite writes into the file as it is: 0600 from the start
    online_backup(settings.db_path, root / DB_NAME)
    snapshot = Engine(root / DB_NAME)
    (root / "audio").mkdir(mode=0o700)
    try:
        ready = ready_files(snapshot.connection)
        vanished: list[str] = []
        total = 0
        for done, (file_id, fmt, size, _sha) in enumerate(ready, 1):
            source = _audio_path(settings.data_dir, file_id, fmt)
            target = _audio_path(root, file_id, fmt)
            target.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                copy_private(source, target)
                total += size
            except FileNotFoundError:
                vanished.append(file_id)
            if progress is not None:
                progress(done, len(ready))
        # The copy then says exactly what the backup holds: no row points at a file that is not in it.
        forget_files(snapshot.connection, vanished)
        schema = schema_version(snapshot.connection)
    finally:
        snapshot.shutdown()
    if settings.config_path.exists():
        copy_private(settings.config_path, root / CONFIG_FILE)
    # The HTTPS certificate, wherever the settings keep it, so the restored server serves the same one and
    # the apps' pinned fingerprint still matches; its key is a secret like the others.
    tls = settings.tls_cert is not None and settings.tls_key is not None
    if settings.tls_cert is not None:
        copy_private(settings.tls_cert, root / TLS_CERT)
    if secrets:
        (root / "secrets").mkdir(mode=0o700)
        for name in SECRET_FILES:
            copy_private(settings.secrets_dir / name, root / "secrets" / name)
        if settings.tls_key is not None:
            copy_private(settings.tls_key, root / TLS_KEY)
    files = len(ready) - len(vanished)
    manifest = {
        "format": FORMAT,
        "speccyd_version": __version__,
        "schema_version": schema,
        "created_at": time.time(),
        "files": files,
        "bytes": total,
        "secrets": secrets,
        "tls": tls,
        "database_bytes": (root / DB_NAME).stat().st_size,
        "database_sha256": _sha256(root / DB_NAME),
    }
    write_private(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return BackupReport(root, files, total, secrets, len(vanished))
