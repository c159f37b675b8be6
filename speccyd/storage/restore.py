"""`speccyd restore`: putting a backup back, treating it as untrusted data from its first byte.

The owner restores archives that came from elsewhere, often as root. So, before anything is written:

- only the backup layout is read (storage/backup.py): manifest.json, speccyd.db, config.toml, tls.crt,
  tls.key, secrets/<the two key files>, audio/<xx>/<id>.<format>; any other member, any link, device or
  duplicate, and any path that is a symlink (a directory such as secrets/ or audio/ included) is refused;
- sizes are checked against the manifest and against the free disk (a small archive must not unpack hundreds
  of MB of junk): the audio against the manifest's `bytes`, the database against `database_bytes`, the small
  files against fixed caps;
- the database's schema must be exactly what speccyd's migrations create at its version: an extra trigger,
  view, table or index, or a changed one, is refused (a trigger could, say, move one user's sign-in into
  another's account), and only then is it migrated.

Then everything is staged inside the target directory itself and renamed into place, so the target may be a
mount point (a Docker volume at /data) that cannot be replaced; every file is private from its first byte.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from speccyd.config.settings import CONFIG_FILE, set_config_values
from speccyd.config.text import describe
from speccyd.media.formats import FORMATS
from speccyd.storage.backup import (
    DB_NAME,
    FORMAT,
    MANIFEST,
    SECRET_FILES,
    TLS_CERT,
    TLS_KEY,
    BackupError,
    Progress,
    RestoreReport,
    _sha256,
    copy_private,
    create_private,
    is_archive,
)
from speccyd.storage.errors import StoreError
from speccyd.storage.sqlite.engine import Engine
from speccyd.storage.sqlite.maintenance import integrity_check, ready_files
from speccyd.storage.sqlite.migrations import MIGRATIONS

# Caps for the files whose size no manifest states; generous, and far below "hundreds of MB".
_SMALL_FILE_CAP = {MANIFEST: 1 << 20, CONFIG_FILE: 1 << 20, TLS_CERT: 1 << 20, TLS_KEY: 1 << 20}
_SECRET_CAP = 4096
# What may sit in an empty target: the file system's own directory on an ext4 volume.
_IGNORABLE = {"lost+found"}


@dataclass(frozen=True)
class Member:
    """One regular file of the backup, as the layout names it, with its size."""

    name: str  # "audio/ab/ab12….mp3", "secrets/session.key", ...
    size: int


def _layout_kind(name: str) -> str | None:
    """What a path of the layout holds ("dir", "audio", "secret", "db", or the small file's name); None if the
    path is not one of the backup's."""
    parts = PurePosixPath(name).parts
    if name == DB_NAME:
        return "db"
    if name in _SMALL_FILE_CAP:
        return name
    if parts in (("audio",), ("secrets",)):
        return "dir"
    if len(parts) == 2 and parts[0] == "secrets" and parts[1] in SECRET_FILES:
        return "secret"
    if (
        len(parts) == 2
        and parts[0] == "audio"
        and len(parts[1]) == 2
        and all(c in "0123456789abcdef" for c in parts[1])
    ):
        return "dir"
    if len(parts) == 3 and parts[0] == "audio":
        stem, _, fmt = parts[2].partition(".")
        if len(stem) == 32 and all(c in "0123456789abcdef" for c in stem) and stem[:2] == parts[1] and fmt in FORMATS:
            return "audio"
    return None


def _check_sizes(members: list[Member], manifest: dict[str, Any], free: int) -> None:
    audio = sum(m.size for m in members if _layout_kind(m.name) == "audio")
    if not isinstance(manifest.get("bytes"), int) or audio > manifest["bytes"]:
        raise BackupError(f"the backup's audio ({audio:,} bytes) is more than its manifest states; refusing it")
    for m in members:
        kind = _layout_kind(m.name)
        if kind == "db" and isinstance(manifest.get("database_bytes"), int) and m.size > manifest["database_bytes"]:
            raise BackupError(f"{DB_NAME} is larger than its manifest states; refusing the backup")
        if (kind == "secret" and m.size > _SECRET_CAP) or (kind in _SMALL_FILE_CAP and m.size > _SMALL_FILE_CAP[kind]):
            raise BackupError(f"{m.name} is {m.size:,} bytes, far more than such a file can be; refusing the backup")
    total = sum(m.size for m in members)
    if total > free:
        raise BackupError(f"the backup needs {total:,} bytes and the target's disk has {free:,} free")


def _member(name: str, size: int, seen: set[str]) -> Member:
    if _layout_kind(name) in (None, "dir"):
        raise BackupError(f"{name!r} is not part of a speccyd backup; refusing the backup")
    if name in seen:
        raise BackupError(f"{name!r} appears twice in the backup; refusing it")
    seen.add(name)
    return Member(name, size)


# --- reading a backup directory: every path lstat'ed, never followed ---


def _scan_directory(root: Path, budget: int) -> list[Member]:
    members: list[Member] = []
    seen: set[str] = set()
    total = 0

    def walk(directory: Path, prefix: str) -> None:
        nonlocal total
        with os.scandir(directory) as entries:
            for entry in entries:
                name = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise BackupError(f"{directory / entry.name} is a symbolic link; a backup holds none")
                if stat.S_ISDIR(st.st_mode):
                    if _layout_kind(name) != "dir":
                        raise BackupError(f"{name!r} is not part of a speccyd backup; refusing the backup")
                    walk(Path(entry.path), f"{name}/")
                elif stat.S_ISREG(st.st_mode):
                    members.append(_member(name, st.st_size, seen))
                    total += st.st_size
                    if total > budget:
                        raise BackupError(f"the backup holds more than the {budget:,} bytes that could be restored")
                else:
                    raise BackupError(f"{directory / entry.name} is not a regular file; refusing the backup")

    walk(root, "")
    return members


def _read_manifest(read: Callable[[str], bytes], names: set[str]) -> dict[str, Any]:
    if MANIFEST not in names:
        raise BackupError(f"no {MANIFEST}; is it a speccyd backup?")
    try:
        manifest = json.loads(read(MANIFEST))
    except ValueError as e:
        raise BackupError(f"{MANIFEST} is not readable JSON ({e}); is it a speccyd backup?") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
    if DB_NAME not in names:
        raise BackupError(f"the backup has no {DB_NAME}")
    return manifest


# --- reading a .tar.gz: headers first (nothing written), then member by member into the staging dir ---


def _scan_archive(tar: tarfile.TarFile, budget: int) -> list[Member]:
    members: list[Member] = []
    seen: set[str] = set()
    total = 0
    for info in tar:  # headers only: the data is skipped (decompressed, never stored) until it is extracted
        name = info.name.rstrip("/")
        if info.isdir():
            if _layout_kind(name) != "dir":
                raise BackupError(f"refusing archive member {info.name!r}: not part of a speccyd backup")
            continue
        if not info.isreg() or info.issparse():
            raise BackupError(f"refusing archive member {info.name!r}: a backup holds only plain files")
        try:
            members.append(_member(name, info.size, seen))
        except BackupError as e:
            raise BackupError(f"refusing archive member {info.name!r}: {e}") from None
        total += info.size
        if total > budget:
            raise BackupError(f"the archive holds more than the {budget:,} bytes that could be restored")
    return members


def _extract(tar: tarfile.TarFile, wanted: set[str], staging: Path) -> None:
    """Write the wanted regular members into `staging`, each a new private file (their names are checked)."""
    for info in tar:
        name = info.name.rstrip("/")
        if name not in wanted:
            continue
        source = tar.extractfile(info)
        assert source is not None
        target = staging.joinpath(*PurePosixPath(name).parts)
        for parent in reversed(target.relative_to(staging).parents[:-1]):
            (staging / parent).mkdir(mode=0o700, exist_ok=True)
        with source, create_private(target) as out:
            _copy_exactly(source, out, info.size)


def _copy_exactly(source: IO[bytes], out: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        block = source.read(min(left, 1 << 20))
        if not block:
            raise BackupError("the archive ends inside a file: it is damaged")
        out.write(block)
        left -= len(block)


# --- the database: its schema is exactly speccyd's, then it is migrated and checked ---


def _schema(db: sqlite3.Connection) -> set[tuple[str, str, str, str | None]]:
    return {(r[0], r[1], r[2], r[3]) for r in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}


def expected_schema(version: int) -> set[tuple[str, str, str, str | None]]:
    """sqlite_master of a database that speccyd's first `version` migrations created."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migrate in MIGRATIONS[:version]:
            migrate(db)
        return _schema(db)
    finally:
        db.close()


def check_schema(path: Path) -> None:
    """Refuse a database whose schema is not exactly the one speccyd's migrations make at its version."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{DB_NAME} cannot be opened: {e}") from None
    try:
        db.execute("PRAGMA trusted_schema = OFF")  # no function of the file's own schema runs while we look
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        found = _schema(db)
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{DB_NAME} is not a readable database: {e}") from None
    finally:
        db.close()
    if not 1 <= version <= len(MIGRATIONS):
        raise BackupError(f"{DB_NAME} has schema version {version}; this speccyd knows 1 to {len(MIGRATIONS)}")
    expected = expected_schema(version)
    extra = sorted(f"{t} {n}" for t, n, _, _ in found - expected)
    missing = sorted(f"{t} {n}" for t, n, _, _ in expected - found)
    if extra or missing:
        changes = "; ".join(
            [*(f"unexpected or changed {x}" for x in extra[:5]), *(f"missing {x}" for x in missing[:5])]
        )
        raise BackupError(f"{DB_NAME} does not have speccyd's schema ({changes}); refusing to restore it")


# --- restore ---


def restore(src: Path, data_dir: Path, *, progress: Progress | None = None) -> RestoreReport:
    """Check a backup, then make it `data_dir` (missing, or an empty directory, a mount point included)."""
    src = src.expanduser().absolute()
    data_dir = data_dir.expanduser().absolute()
    if not src.exists():
        raise BackupError(f"{src} does not exist")
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise BackupError(f"{data_dir} is not a directory; restore only into a new or empty data dir")
    if data_dir.exists() and {p.name for p in data_dir.iterdir()} - _IGNORABLE:
        raise BackupError(f"{data_dir} is not empty; restore only into a new or empty data dir")
    created = not data_dir.exists()
    if created:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(mode=0o700)
    free = shutil.disk_usage(data_dir).free
    # Staged inside the target: a rename within one file system, whatever the target is (a mount point
    # cannot be replaced, and its parent may not even be writable).
    staging = data_dir / f".speccyd-restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        if is_archive(src):
            _stage_archive(src, staging, free)
        elif src.is_dir():
            _stage_directory(src, staging, free)
        else:
            raise BackupError(f"{src} is neither a backup directory nor a .tar.gz backup")
        report = _finish(staging, progress)
        for item in staging.iterdir():
            os.replace(item, data_dir / item.name)
        staging.rmdir()
        data_dir.chmod(0o700)
        return RestoreReport(data_dir, report.files, report.bytes, report.secrets)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _stage_archive(src: Path, staging: Path, free: int) -> None:
    try:
        with tarfile.open(src, "r:gz") as tar:
            members = _scan_archive(tar, free)
            names = {m.name for m in members}

            def read(name: str) -> bytes:
                source = tar.extractfile(name)
                assert source is not None
                return source.read(_SMALL_FILE_CAP[MANIFEST] + 1)

            _check_sizes(members, _read_manifest(read, names), free)
        with tarfile.open(src, "r:gz") as tar:  # a second pass: a .gz stream cannot seek back
            _extract(tar, names, staging)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BackupError(f"{src} is not a readable .tar.gz backup: {describe(e)}") from None


def _stage_directory(src: Path, staging: Path, free: int) -> None:
    members = _scan_directory(src, free)
    names = {m.name for m in members}

    def read(name: str) -> bytes:
        fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read(_SMALL_FILE_CAP[MANIFEST] + 1)

    _check_sizes(members, _read_manifest(read, names), free)
    for name in sorted(names):
        target = staging.joinpath(*PurePosixPath(name).parts)
        for parent in reversed(target.relative_to(staging).parents[:-1]):
            (staging / parent).mkdir(mode=0o700, exist_ok=True)
        copy_private(src.joinpath(*PurePosixPath(name).parts), target)


def _finish(staged: Path, progress: Progress | None) -> RestoreReport:
    """The staged copy checked against its manifest, its database checked and migrated."""
    manifest = json.loads((staged / MANIFEST).read_bytes())
    if _sha256(staged / DB_NAME) != manifest.get("database_sha256"):
        raise BackupError(f"{DB_NAME} does not match the manifest: the backup is damaged")
    check_schema(staged / DB_NAME)
    try:
        engine = Engine(staged / DB_NAME)  # migrates an older schema (a newer one failed check_schema)
    except StoreError as e:
        raise BackupError(str(e)) from None
    try:
        problems = integrity_check(engine.connection)
        if problems:
            raise BackupError(f"database fails PRAGMA integrity_check: {'; '.join(problems[:5])}")
        ready = ready_files(engine.connection)
    finally:
        engine.shutdown()
    (staged / "audio").mkdir(mode=0o700, exist_ok=True)
    present = {p.relative_to(staged).as_posix() for p in (staged / "audio").glob("*/*")}
    total = 0
    for done, (file_id, fmt, size, sha256) in enumerate(ready, 1):
        name = f"audio/{file_id[:2]}/{file_id}.{fmt}"
        if _layout_kind(name) != "audio":  # the database names a path no speccyd file can have
            raise BackupError(f"the database names a file that cannot be a speccyd file: {file_id!r}.{fmt!r}")
        if name not in present:
            raise BackupError(f"audio file {file_id}.{fmt} is missing from the backup")
        audio = staged / name
        if audio.stat().st_size != size or _sha256(audio) != sha256:
            raise BackupError(f"audio file {file_id}.{fmt} does not match its checksum: the backup is damaged")
        present.discard(name)
        total += size
        if progress is not None:
            progress(done, len(ready))
    for name in present:  # audio no row names: not restored (the server would sweep it anyway)
        (staged / name).unlink()
    (staged / MANIFEST).unlink()
    has_secrets = (staged / "secrets").is_dir()
    if (staged / TLS_CERT).is_file() and (staged / TLS_KEY).is_file():
        _point_config_at_tls(staged)
    return RestoreReport(staged, len(ready), total, has_secrets)


def _point_config_at_tls(staged: Path) -> None:
    """The certificate and key are restored beside the database: config.toml names them there, wherever the
    original server kept them, so the restored server serves HTTPS with the same certificate (the same pin)."""
    config = staged / CONFIG_FILE
    if not config.exists():
        create_private(config).close()
    set_config_values(config, {"tls_cert": TLS_CERT, "tls_key": TLS_KEY})
