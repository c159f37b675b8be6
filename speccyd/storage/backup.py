"""`speccyd backup` and `speccyd restore`: a consistent snapshot of a running server, and putting it back.

A backup is a directory (or the same tree in a .tar.gz):

    manifest.json      what is inside, written last
    speccyd.db         SQLite's online backup API: a consistent copy while the server keeps writing
    audio/xx/<id>.<fmt> every file that is ready in that copy (files are never changed in place, only
                       renamed into place and deleted, so copying them after the snapshot is safe)
    config.toml        if present
    secrets/           unless --no-secrets: without them stored keys cannot be decrypted and every
                       session ends, but the backup holds nothing that unlocks anyone's OpenAI key
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

from speccyd import __version__
from speccyd.config.settings import CONFIG_FILE, Settings
from speccyd.media.formats import FORMATS
from speccyd.storage.blobs import make_private_dir
from speccyd.storage.errors import StoreError
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.maintenance import forget_files, integrity_check, online_backup, ready_files, schema_version

MANIFEST = "manifest.json"
FORMAT = 1
DB_NAME = "speccyd.db"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_FILE_ID = re.compile(r"[0-9a-f]{32}")

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
    if archive:
        if dest.exists():
            raise BackupError(f"{dest} already exists; choose a new file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=".speccyd-backup-", dir=dest.parent))
    else:
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise BackupError(f"{dest} exists and is not an empty directory")
        make_private_dir(dest)
        root = dest
    try:
        report = _write_tree(settings, root, secrets, progress)
        if archive:
            partial = dest.with_name(dest.name + ".part")
            # Level 1: compressed audio (mp3, opus, aac) does not shrink, so higher levels only cost time;
            # the database still compresses well at level 1.
            with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
                for item in sorted(root.iterdir()):
                    tar.add(item, arcname=item.name)
            partial.chmod(0o600)
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
    online_backup(settings.db_path, root / DB_NAME)
    snapshot = Engine(root / DB_NAME)
    try:
        ready = ready_files(snapshot.connection)
        vanished: list[str] = []
        total = 0
        for done, (file_id, fmt, size, _sha) in enumerate(ready, 1):
            source = _audio_path(settings.data_dir, file_id, fmt)
            target = _audio_path(root, file_id, fmt)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                shutil.copyfile(source, target)
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
    (root / DB_NAME).chmod(0o600)
    if settings.config_path.exists():
        shutil.copyfile(settings.config_path, root / CONFIG_FILE)
        (root / CONFIG_FILE).chmod(0o600)
    if secrets:
        make_private_dir(root / "secrets")
        for item in settings.secrets_dir.iterdir():
            if item.is_file():
                shutil.copyfile(item, root / "secrets" / item.name)
                (root / "secrets" / item.name).chmod(0o600)
    files = len(ready) - len(vanished)
    manifest = {
        "format": FORMAT,
        "speccyd_version": __version__,
        "schema_version": schema,
        "created_at": time.time(),
        "files": files,
        "bytes": total,
        "secrets": secrets,
        "database_sha256": _sha256(root / DB_NAME),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return BackupReport(root, files, total, secrets, len(vanished))


def restore(src: Path, data_dir: Path, *, progress: Progress | None = None) -> RestoreReport:
    """Check a backup's integrity, then make it `data_dir` (which must be missing or empty)."""
    src = src.expanduser().absolute()
    data_dir = data_dir.expanduser().absolute()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} is not empty; restore only into a new or empty data dir")
    if not src.exists():
        raise BackupError(f"{src} does not exist")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".speccyd-restore-", dir=data_dir.parent))
    try:
        if is_archive(src):
            source = work / "unpacked"
            try:
                with tarfile.open(src, "r:gz") as tar:
                    _safe_extract(tar, source)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise BackupError(f"{src} is not a readable .tar.gz backup: {e}") from None
        else:
            source = src
        staged = work / "data"
        report = _restore_tree(source, staged, progress)
        if data_dir.exists():
            data_dir.rmdir()
        os.replace(staged, data_dir)
        return RestoreReport(data_dir, report.files, report.bytes, report.secrets)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    """Extract only plain files and directories inside `target`: a backup is data, never links or devices."""
    for member in tar.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing archive member {member.name!r}")
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library checks as well
        tar.extractall(target, filter="data")
    else:  # pragma: no cover - older 3.11 releases; the members were checked above
        tar.extractall(target)  # noqa: S202


def _restore_tree(source: Path, staged: Path, progress: Progress | None) -> RestoreReport:
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{source} has no readable {MANIFEST}; is it a speccyd backup? ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{source}: unknown backup format {manifest.get('format')!r}")
    if _sha256(source / DB_NAME) != manifest.get("database_sha256"):
        raise BackupError(f"{source / DB_NAME} does not match the manifest: the backup is damaged")
    make_private_dir(staged)
    shutil.copyfile(source / DB_NAME, staged / DB_NAME)
    (staged / DB_NAME).chmod(0o600)
    try:
        engine = Engine(staged / DB_NAME)  # refuses a newer schema, migrates an older one
    except StoreError as e:
        raise BackupError(str(e)) from None
    try:
        problems = integrity_check(engine.connection)
        if problems:
            raise BackupError(f"database fails PRAGMA integrity_check: {'; '.join(problems[:5])}")
        ready = ready_files(engine.connection)
    finally:
        engine.shutdown()
    make_private_dir(staged / "audio")
    total = 0
    for done, (file_id, fmt, size, sha256) in enumerate(ready, 1):
        audio = _audio_path(source, file_id, fmt)
        if not audio.is_file():
            raise BackupError(f"audio file {file_id}.{fmt} is missing from the backup")
        if audio.stat().st_size != size or _sha256(audio) != sha256:
            raise BackupError(f"audio file {file_id}.{fmt} does not match its checksum: the backup is damaged")
        target = _audio_path(staged, file_id, fmt)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(audio, target)
        target.chmod(0o600)
        total += size
        if progress is not None:
            progress(done, len(ready))
    if (source / CONFIG_FILE).is_file():
        shutil.copyfile(source / CONFIG_FILE, staged / CONFIG_FILE)
        (staged / CONFIG_FILE).chmod(0o600)
    has_secrets = (source / "secrets").is_dir()
    if has_secrets:
        make_private_dir(staged / "secrets")
        for item in (source / "secrets").iterdir():
            if item.is_symlink() or not item.is_file():  # a backup is data: a link could copy /etc/shadow in
                raise BackupError(f"{item} is not a plain file; refusing the backup")
            shutil.copyfile(item, staged / "secrets" / item.name)
            (staged / "secrets" / item.name).chmod(0o600)
    return RestoreReport(staged, len(ready), total, has_secrets)
