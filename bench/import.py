"""Import throughput: 1,000 small files and one 100 MB file, through POST /files/import and `speccyd import`.

    .venv/bin/python bench/import.py [--files 1000] [--big-mb 100] [--concurrency 4] [--format mp3]

Everything on loopback: a real `speccyd serve` in a temp data dir (with a fake upstream that is never called),
real audio made by ffmpeg (a 2.2 s speech-length clip per file, each with its own text so each is a new file),
and the 100 MB file as that clip's frames repeated (a valid mp3; for other formats a long ffmpeg encode).
Prints files/s and MB/s for each path, and checks the files are there afterwards. Bounded: at most 10,000
files and 500 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speccyd.media import mpeg  # noqa: E402
from tests.fake_upstream import FakeUpstream, serve_fake  # noqa: E402
from tests.server_process import SPECCYD, ServerProcess, speccyd_env  # noqa: E402

ENCODERS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "opus": ["-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-f", "ogg"],
}


def encode(fmt: str, seconds: float, path: Path) -> bytes:
    source = f"anoisesrc=color=pink:duration={seconds}:sample_rate=24000:seed=7"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", *ENCODERS[fmt], str(path)],
        check=True,
        timeout=600,
    )
    return path.read_bytes()


def big_file(fmt: str, size: int, directory: Path) -> Path:
    path = directory / f"big.{fmt}"
    if fmt == "mp3":  # repeated frames: as valid as an encode, and seconds instead of minutes to make
        _, frames = mpeg.scan_all(encode("mp3", 10, directory / "ten.mp3"))
        block = b"".join(frame.data for frame in frames)
        path.write_bytes(block * (size // len(block) + 1))
    else:
        seconds = size / max(1, len(encode(fmt, 10, directory / f"ten.{fmt}")) / 10)
        encode(fmt, round(seconds, 1), path)
    return path


def request(text: str, fmt: str) -> dict[str, object]:
    return {"text": text, "voice": "nova", "model": "tts-1", "format": fmt, "speed": 1.0}


async def http_import(
    base: str, headers: dict[str, str], items: list[tuple[dict[str, object], Path]], workers: int
) -> None:
    queue = list(reversed(items))
    timeout = aiohttp.ClientTimeout(total=600)

    async def worker() -> None:
        async with aiohttp.ClientSession(base_url=base, timeout=timeout) as http:
            while queue:
                fields, path = queue.pop()
                form = aiohttp.FormData()
                form.add_field("request", io.BytesIO(json.dumps(fields).encode()), content_type="application/json")
                with path.open("rb") as f:
                    form.add_field("audio", f, filename=path.name, content_type="application/octet-stream")
                    async with http.post("/files/import", data=form, headers=headers) as response:
                        if response.status != 201:
                            raise SystemExit(f"import failed: {response.status} {await response.text()}")

    await asyncio.gather(*(worker() for _ in range(workers)))


def cli_import(data: Path, user: str, folder: Path, jobs: int, max_size: int) -> str:
    result = subprocess.run(
        [str(SPECCYD), "import", "--user", user, "--jobs", str(jobs), "--data-dir", str(data), str(folder)],
        env=speccyd_env(SPECCY_MAX_IMPORT_SIZE=f"{max_size}B"), capture_output=True, text=True, timeout=1800,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"speccyd import failed:\n{result.stdout}{result.stderr}")
    return result.stdout.splitlines()[0]


def export(folder: Path, items: list[tuple[dict[str, object], Path]]) -> None:
    with (folder / "manifest.jsonl").open("w") as manifest:
        for fields, path in items:
            manifest.write(json.dumps({"file": os.path.relpath(path, folder), **fields}) + "\n")


def line(what: str, files: int, size: int, seconds: float) -> str:
    rates = f"{files / seconds:7.1f} files/s {size / 1e6 / seconds:6.1f} MB/s"
    return f"{what:38} {files:5} files {size / 1e6:8.1f} MB in {seconds:6.2f}s: {rates}"


async def run(args: argparse.Namespace) -> None:
    files = min(args.files, 10_000)
    big_size = min(args.big_mb, 500) * 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = encode(args.format, 2.2, root / f"clip.{args.format}")
        # Each set of files inside the folder `speccyd import` reads, as the app exports them.
        (root / "export-small" / "audio").mkdir(parents=True)
        (root / "export-big").mkdir()
        small = []
        for n in range(files):
            path = root / "export-small" / "audio" / f"{n}.{args.format}"
            path.write_bytes(clip)
            small.append(path)
        big = big_file(args.format, big_size, root / "export-big")
        print(f"{files} files of {len(clip)} bytes ({args.format}), one of {big.stat().st_size / 1e6:.1f} MB; "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip

        fake_runner, upstream = await serve_fake(FakeUpstream())
        data = root / "data"
        limit = big_size * 2
        env = {"SPECCY_MAX_IMPORT_SIZE": f"{limit}B"}  # log_level info, as in production
        server = ServerProcess(data, upstream, root / "server.log", env=env)
        try:
            await server.start()
            async with aiohttp.ClientSession(base_url=server.url) as http:
                users = []
                for key in ("sk-test-http", "sk-test-cli"):
                    async with http.post("/auth/verify", json={"openai_token": key}) as response:
                        users.append(await response.json())
            headers = {"Authorization": f"Bearer {users[0]['session_token']}"}
            small_items = [(request(f"Small file {n}.", args.format), path) for n, path in enumerate(small)]
            big_item = [(request("One long book.", args.format), big)]

            started = time.perf_counter()
            await http_import(server.url, headers, small_items, args.concurrency)
            print(
                line(
                    f"POST /files/import, {args.concurrency} clients",
                    files,
                    files * len(clip),
                    time.perf_counter() - started,
                )
            )
            started = time.perf_counter()
            await http_import(server.url, headers, big_item, 1)
            print(line("POST /files/import, the big file", 1, big.stat().st_size, time.perf_counter() - started))

            export(root / "export-small", small_items)
            export(root / "export-big", big_item)
            cli_user = users[1]["user_id"]
            started = time.perf_counter()
            summary = await asyncio.to_thread(
                cli_import, data, cli_user, root / "export-small", args.concurrency, limit
            )
            print(
                line(
                    f"speccyd import --jobs {args.concurrency}", files, files * len(clip), time.perf_counter() - started
                )
            )
            print(f"  {summary}")
            started = time.perf_counter()
            summary = await asyncio.to_thread(cli_import, data, cli_user, root / "export-big", 1, limit)
            print(line("speccyd import, the big file", 1, big.stat().st_size, time.perf_counter() - started))
            print(f"  {summary}")
            started = time.perf_counter()
            summary = await asyncio.to_thread(
                cli_import, data, cli_user, root / "export-small", args.concurrency, limit
            )
            print(line("speccyd import again (all there)", files, 0, time.perf_counter() - started))
            stored = sum(1 for p in (data / "audio").glob("*/*") if p.is_file())
            assert stored == 2 * (files + 1), f"{stored} files stored, expected {2 * (files + 1)}"
            assert await server.stop() == 0
        finally:
            await server.kill()
            await fake_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP clients, and `speccyd import --jobs`")
    parser.add_argument("--format", choices=sorted(ENCODERS), default="mp3")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
