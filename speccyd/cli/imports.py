"""`speccyd import --user ID DIR`: bring a folder of audio exported from the app in, as that user's files.

DIR holds `manifest.jsonl`, one JSON object per line: `file` (the audio's path inside DIR) and the fields of
the request that made it (`text`, `voice`, `model`, `format`, `speed`, `instructions`; `content_hash`
optionally, checked). Safe while the server runs and safe to run again: what is there already is kept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from speccyd.cli.common import DataDir, fail, find_user, run_with_db, settings_for

if TYPE_CHECKING:
    from speccyd.generation.imports import Importer
    from speccyd.generation.speech import SpeechRequest
    from speccyd.storage.database import Database
    from speccyd.storage.records import FileRow

MANIFEST = "manifest.jsonl"
DEFAULT_JOBS = 4  # files in flight: validation on two threads, copies and fsyncs overlapping them


@dataclass
class Entry:
    line: int
    file: str
    path: Path | None = None
    speech: SpeechRequest | None = None


@dataclass
class Report:
    imported: int = 0
    imported_bytes: int = 0
    seconds_of_audio: float = 0.0
    kept: int = 0
    generating: int = 0
    refused: list[tuple[Entry, str, str]] = field(default_factory=list)  # (entry, code, reason)


def read_manifest(directory: Path, max_text_chars: int, report: Report) -> list[Entry]:
    """The manifest's entries that can be tried; the others go to `report.refused` with their reason."""
    from speccyd.generation.errors import InvalidRequest
    from speccyd.generation.speech import parse_speech_request

    manifest = directory / MANIFEST
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        fail(f"{manifest} does not exist: export the library from the app first (docs/clients.md)", 2)
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {manifest}: {e}", 2)
    root = directory.resolve()
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        entry = Entry(number, "")
        try:
            fields: Any = json.loads(line)
        except ValueError:
            report.refused.append((entry, "invalid_json", "the line is not JSON"))
            continue
        if not isinstance(fields, dict) or not isinstance(fields.get("file"), str) or not fields["file"]:
            report.refused.append((entry, "invalid_entry", 'the line needs a JSON object with a "file" path'))
            continue
        entry.file = fields["file"]
        path = (root / entry.file).resolve()
        if not path.is_relative_to(root):
            report.refused.append((entry, "outside_folder", f"{entry.file} is outside {directory}"))
            continue
        try:
            # Whole already: the "cannot be joined" limit on long opus/flac text does not apply to imports.
            entry.speech = parse_speech_request(fields, max_text_chars, max_text_chars)
        except InvalidRequest as e:
            report.refused.append((entry, e.code, str(e)))
            continue
        claimed = fields.get("content_hash")
        if claimed is not None and claimed != entry.speech.content_hash:
            report.refused.append(
                (entry, "content_hash_mismatch", f"the fields hash to {entry.speech.content_hash}, not {claimed}")
            )
            continue
        entry.path = path
        entries.append(entry)
    return entries


def data_owner(audio_dir: Path) -> tuple[int, int] | None:
    """Whom the audio it writes must belong to: run as root beside a server that is not (systemd's dynamic
    user, a container's PUID), a root-owned 0600 file would be audio the server cannot read."""
    if os.geteuid() != 0:
        return None
    try:
        st = audio_dir.stat()
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


async def _import_all(
    importer: Importer,
    user_id: str,
    entries: list[Entry],
    jobs: int,
    dry_run: bool,
    report: Report,
    give: Callable[[FileRow], None],
) -> None:
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from speccyd.generation.errors import AudioTooLarge, InvalidAudio, QuotaExceeded
    from speccyd.generation.imports import audio_problem
    from speccyd.media.validate import AudioError, validate_file

    slots = asyncio.Semaphore(jobs)
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())

    checked: set[str] = set()

    async def check_only(entry: Entry) -> None:
        assert entry.path is not None and entry.speech is not None
        content = entry.speech.content_hash
        if content in checked or await importer.existing(user_id, content) is not None:
            report.kept += 1  # there already, or earlier in this manifest: a real run keeps one
            return
        checked.add(content)
        size = (await asyncio.to_thread(entry.path.stat)).st_size
        if size > importer.max_size:
            raise AudioTooLarge(f"{size} bytes is larger than this server's max_import_size ({importer.max_size})")
        try:
            info = await asyncio.to_thread(validate_file, entry.speech.format, entry.path)
        except AudioError as e:
            raise InvalidAudio(audio_problem(entry.speech.format, e)) from None
        report.imported += 1
        report.imported_bytes += info.size
        report.seconds_of_audio += info.seconds

    async def one(entry: Entry) -> None:
        assert entry.path is not None and entry.speech is not None
        async with slots:
            try:
                if dry_run:
                    await check_only(entry)
                    return
                imported = await importer.import_path(user_id, entry.speech, entry.path)
            except InvalidAudio as e:
                report.refused.append((entry, "invalid_audio", str(e)))
            except AudioTooLarge as e:
                report.refused.append((entry, "audio_too_large", str(e)))
            except QuotaExceeded as e:
                report.refused.append((entry, "quota_exceeded", str(e)))
            except OSError as e:
                if not entry.path.is_file():
                    report.refused.append((entry, "missing_file", f"{entry.file} does not exist or is not a file"))
                else:  # reading it, or writing its copy (a server starting meanwhile empties audio/tmp)
                    report.refused.append((entry, "io_error", f"{e.strerror or e}: {e.filename or entry.file}"))
            else:
                if imported.created:
                    give(imported.row)
                    report.imported += 1
                    report.imported_bytes += imported.row.size_bytes or 0
                    report.seconds_of_audio += imported.audio.seconds if imported.audio else 0
                elif imported.row.status == "generating":
                    report.generating += 1
                else:
                    report.kept += 1
            finally:
                bar.advance(task)

    # On stderr so a script reading stdout sees only the summary.
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("import", total=len(entries))
        await asyncio.gather(*(one(entry) for entry in entries))


def import_audio(
    directory: Annotated[
        Path,
        typer.Argument(help=f"A folder exported from the app: {MANIFEST} and the audio files.", show_default=False),
    ],
    user: Annotated[str, typer.Option("--user", help="Whose files they become (id or unique prefix).")],
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every file; store nothing.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", min=1, max=32, help="Files imported at once.")] = DEFAULT_JOBS,
) -> None:
    """Import audio exported from the app as a user's files (safe while the server runs, and to repeat)."""
    settings = settings_for(data_dir)
    if not directory.is_dir():
        fail(f"{directory} is not a folder", 2)
    report = Report()
    entries = read_manifest(directory, settings.max_text_chars, report)

    async def work(db: Database) -> tuple[str, float]:
        from speccyd.config.clock import SYSTEM_CLOCK
        from speccyd.generation.imports import Importer
        from speccyd.generation.quotas import limits_from
        from speccyd.storage.blobs import open_blobs
        from speccyd.storage.errors import StorageFull

        user_id = await find_user(db, user, "--user ")
        blobs = open_blobs(settings)
        importer = Importer(settings, db, blobs, SYSTEM_CLOCK, lambda: limits_from(settings))
        owner = data_owner(settings.audio_dir)

        def give(row: FileRow) -> None:
            if owner is not None:
                path = blobs.local_path(row.id, row.format)
                for made in (path.parent, path):  # the shard directory may be new too
                    os.chown(made, *owner)

        started = time.monotonic()
        try:
            await _import_all(importer, user_id, entries, jobs, dry_run, report, give)
        except StorageFull as e:
            _summary(report, user_id, time.monotonic() - started, dry_run)
            fail(f"stopped: {e}")
        return user_id, time.monotonic() - started

    user_id, seconds = run_with_db(settings, work)
    _summary(report, user_id, seconds, dry_run)
    if report.refused:
        raise typer.Exit(1)


def _summary(report: Report, user_id: str, seconds: float, dry_run: bool) -> None:
    from speccyd.config.units import format_size

    verb = "would import" if dry_run else "imported"
    minutes, secs = divmod(round(report.seconds_of_audio), 60)
    audio = f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"
    files = "file" if report.imported == 1 else "files"
    typer.echo(
        f"{verb} {report.imported} {files} ({format_size(report.imported_bytes)}, {audio} of audio) "
        f"for user {user_id[:12]} in {seconds:.1f}s"
    )
    typer.echo(
        f"already there: {report.kept}" + (f" (and {report.generating} being generated)" if report.generating else "")
    )
    typer.echo(f"refused: {len(report.refused)}")
    for entry, code, reason in sorted(report.refused, key=lambda r: r[0].line):
        where = f"line {entry.line}" + (f" ({entry.file})" if entry.file else "")
        typer.echo(f"  {where}: {code}: {reason}")
