"""How long `speccyd backup` and `speccyd restore` take for a data dir of N audio files.

    .venv/bin/python bench/backup_restore.py [--files 2000] [--size 40000]

Builds a data dir in a temp directory (real SQLite, real files; no server, no network), then times a
directory backup, a .tar.gz backup and a restore of each. Bounded: at most 20,000 files.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

from speccyd.config.settings import load_settings
from speccyd.security.crypto import ServerSecrets
from speccyd.security.provision import init_data_dir
from speccyd.storage.backup import backup
from speccyd.storage.blobs import open_blobs
from speccyd.storage.database import open_database
from speccyd.storage.records import NewFile
from speccyd.storage.restore import restore


async def build(data: Path, files: int, size: int) -> None:
    settings = load_settings(data, env={})
    await init_data_dir(settings)
    secrets = ServerSecrets.load(settings.secrets_dir)
    db = open_database(settings)
    blobs = open_blobs(settings)
    user = await db.upsert_user("bench", lambda uid: secrets.encrypt_key("sk-bench", uid), time.time())
    audio = os.urandom(size)
    for n in range(files):
        text = f"bench file {n}"
        new = NewFile(hashlib.sha256(text.encode()).hexdigest(), "tts-1", "alloy", "mp3", 1.0, None, text)
        row = (await db.claim(user, new, time.time(), 86400)).row
        writer = blobs.writer(row.id, row.format)
        writer.write(audio)
        await writer.commit()
        await db.mark_ready(row.id, writer.size, writer.sha256, time.time(), 86400)
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=40_000, help="bytes per audio file (~10 s of mp3)")
    args = parser.parse_args()
    files = min(args.files, 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        asyncio.run(build(root / "data", files, args.size))
        print(f"built {files} files x {args.size} bytes in {time.perf_counter() - started:.1f}s")
        settings = load_settings(root / "data", env={})
        for name in ("snap", "snap.tar.gz"):
            started = time.perf_counter()
            report = backup(settings, root / name)
            took = time.perf_counter() - started
            print(f"backup  {name:12} {report.files} files, {report.bytes / 1e6:.0f} MB in {took:.2f}s")
            started = time.perf_counter()
            restored = restore(root / name, root / f"restored-{name}")
            took = time.perf_counter() - started
            print(f"restore {name:12} {restored.files} files, {restored.bytes / 1e6:.0f} MB in {took:.2f}s")


if __name__ == "__main__":
    main()
