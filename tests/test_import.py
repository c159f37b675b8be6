"""Bringing existing audio in: POST /files/import and `speccyd import --user ID DIR`, with real audio made by
ffmpeg in every format; garbage, truncation, limits, quotas, duplicates and two users importing the same audio."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from speccyd.config.settings import load_settings
from speccyd.generation.speech import SpeechRequest
from speccyd.media import mpeg
from tests.conftest import AppClient, Http, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.media_audio import audio
from tests.seeding import with_db
from tests.server_process import SPECCYD, ServerProcess, speccyd_env
from tests.test_openapi import check_contract

MakeClient = Callable[..., Awaitable[AppClient]]
FORMATS = ("mp3", "aac", "wav", "pcm", "flac", "opus")


def fields(text: str, fmt: str = "mp3", **extra: Any) -> dict[str, Any]:
    return {"text": text, "voice": "nova", "model": "tts-1", "format": fmt, "speed": 1.0, **extra}


def content_hash(f: dict[str, Any]) -> str:
    return SpeechRequest(f["text"], f["voice"], f["model"], f["format"], f["speed"], f.get("instructions")).content_hash


def form(request: dict[str, Any] | bytes | None, data: Any, *, audio_first: bool = False) -> aiohttp.FormData:
    body = aiohttp.FormData()
    parts: list[tuple[str, Any, str]] = []
    if request is not None:
        raw = request if isinstance(request, bytes) else json.dumps(request).encode()
        parts.append(("request", io.BytesIO(raw), "application/json"))
    if data is not None:
        parts.append(("audio", data, "application/octet-stream"))
    for name, value, kind in reversed(parts) if audio_first else parts:
        body.add_field(name, value, content_type=kind, filename="audio.bin" if name == "audio" else None)
    return body


async def upload(http: Http, headers: dict[str, str], request: Any, data: Any, **kw: Any) -> tuple[int, Any]:
    async with http.post("/files/import", data=form(request, data, **kw), headers=headers) as response:
        body = await response.read()
        check_contract("POST", "/files/import", response.status, response.headers.get("Content-Type"), body)
        return response.status, json.loads(body)


def stored_audio(data_dir: Path) -> list[Path]:
    """Audio files in the blob store, and anything left in its temp dir."""
    return sorted(p for p in (data_dir / "audio").rglob("*") if p.is_file())


async def test_every_format_imports_and_generate_is_then_a_cache_hit(
    client: AppClient, clips: dict[str, list[bytes]], fake: FakeUpstream, data_dir: Path
) -> None:
    """Each format imports (201, ready) and downloads byte for byte; /tts/generate for it is a 200, no upstream call."""
    headers = await sign_in(client)
    for fmt in FORMATS:
        request = fields(f"Imported {fmt}.", fmt)
        status, body = await upload(client, headers, request, clips[fmt][1])
        assert (status, body["status"], body["content_hash"]) == (201, "ready", content_hash(request)), body
        async with client.get(body["url"]) as response:
            assert response.status == 200
            assert await response.read() == clips[fmt][1]
        status, again = await generate(client, headers, **request)
        assert (status, again["file_id"]) == (200, body["file_id"])
    assert fake.speech_calls == []
    async with client.get("/files?limit=100", headers=headers) as response:
        library = await response.json()
    assert sorted(f["format"] for f in library["files"]) == sorted(FORMATS)
    assert len(stored_audio(data_dir)) == len(FORMATS)


async def test_a_duplicate_answers_200_with_the_existing_file(
    client: AppClient, clips: dict[str, list[bytes]], data_dir: Path
) -> None:
    """Importing audio the user has already: 200 and the same id, nothing stored twice; a generated file counts too."""
    headers = await sign_in(client)
    request = fields("Twice.")
    first_status, first = await upload(client, headers, request, clips["mp3"][0])
    again_status, again = await upload(client, headers, request, clips["mp3"][0])
    assert (first_status, again_status, again["file_id"]) == (201, 200, first["file_id"])
    status, generated = await generate(client, headers, text="Generated first.")
    await wait_status(client, headers, generated["content_hash"])
    status, kept = await upload(client, headers, fields("Generated first.", voice="alloy"), clips["mp3"][2])
    assert (status, kept["file_id"]) == (200, generated["file_id"])
    assert len(stored_audio(data_dir)) == 2


async def test_two_users_importing_the_same_audio_each_get_their_own_file(
    client: AppClient, clips: dict[str, list[bytes]]
) -> None:
    """The same request and bytes from two users: two files, each downloadable only by its owner."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    request = fields("Shared text.")
    (a_status, a), (b_status, b) = await asyncio.gather(
        upload(client, alice, request, clips["mp3"][0]), upload(client, bob, request, clips["mp3"][0])
    )
    assert (a_status, b_status) == (201, 201)
    assert a["file_id"] != b["file_id"] and a["content_hash"] == b["content_hash"]
    async with client.get(f"/files/{a['file_id']}", headers=bob) as response:
        assert response.status == 404
    async with client.get(f"/files/{b['file_id']}", headers=bob) as response:
        assert await response.read() == clips["mp3"][0]


async def test_concurrent_imports_of_the_same_audio_keep_one(
    client: AppClient, clips: dict[str, list[bytes]], data_dir: Path
) -> None:
    """Five identical imports at once: one 201, the others 200 with its id, one file on disk."""
    headers = await sign_in(client)
    results = await asyncio.gather(
        *(upload(client, headers, fields("Race.", "flac"), clips["flac"][0]) for _ in range(5))
    )
    assert sorted(status for status, _ in results) == [200, 200, 200, 200, 201]
    assert len({body["file_id"] for _, body in results}) == 1
    assert len(stored_audio(data_dir)) == 1


def _cases(clips: dict[str, list[bytes]]) -> list[tuple[str, bytes, str]]:
    """(claimed format, bytes, what the refusal says) for uploads that are not what they claim."""
    mp3 = clips["mp3"][2]
    return [
        ("mp3", os.urandom(40_000), "mp3 audio"),
        ("mp3", clips["wav"][0], "not mp3 audio: this is wav"),
        ("mp3", mp3[: len(mp3) - 100], "the file is truncated"),
        ("flac", clips["flac"][2][:-500], "the file is truncated or damaged"),
        ("opus", clips["opus"][2][:-300], "truncated"),
        ("wav", clips["wav"][2][:-1000], "the file is truncated"),
        ("aac", b"<html><body>Bad gateway</body></html>", "not aac audio"),
        ("pcm", clips["pcm"][0][:-1], "16-bit pcm has an even number of bytes"),
        ("pcm", clips["flac"][0], "not raw pcm audio: this is flac"),
        ("opus", clips["mp3"][0], "not opus audio"),
    ]


async def test_invalid_audio_is_refused_with_the_reason_and_never_stored(
    client: AppClient, clips: dict[str, list[bytes]], data_dir: Path
) -> None:
    """Garbage with the right name, another format, or a truncated file: 400 invalid_audio saying what is wrong."""
    headers = await sign_in(client)
    for i, (fmt, data, reason) in enumerate(_cases(clips)):
        request = fields(f"Refused {i}.", fmt)
        status, body = await upload(client, headers, request, data)
        assert (status, body["error"]["code"]) == (400, "invalid_audio"), (fmt, reason, body)
        assert reason in body["error"]["message"], body
        async with client.get(f"/tts/{content_hash(request)}/status", headers=headers) as response:
            assert response.status == 404
    status, body = await upload(client, headers, fields("Empty."), b"")
    assert (status, body["error"]["message"]) == (400, "the audio part is empty")
    assert stored_audio(data_dir) == []


async def test_the_per_file_limit_gives_413(
    make_client: MakeClient, clips: dict[str, list[bytes]], data_dir: Path
) -> None:
    """Past max_import_size: 413 audio_too_large while streaming (or at once from Content-Length); nothing kept."""
    client = await make_client(max_import_size="20KB")
    headers = await sign_in(client)
    big = clips["wav"][2]  # 62 KB
    status, body = await upload(client, headers, fields("Too big.", "wav"), big)
    assert (status, body["error"]["code"]) == (413, "audio_too_large")
    assert "20 KB" in body["error"]["message"] and "max_import_size" in body["error"]["message"]

    async def chunks() -> Any:  # no Content-Length: refused as the bytes pass the limit
        for at in range(0, len(big), 4096):
            yield big[at : at + 4096]

    status, body = await upload(client, headers, fields("Streamed big.", "wav"), chunks())
    assert (status, body["error"]["code"]) == (413, "audio_too_large")
    status, body = await upload(client, headers, fields("Small.", "wav"), clips["wav"][0][: 20_000 - 1000])
    assert status == 400  # within the limit, so read and checked: a cut wav
    async with client.post(
        "/files/import",
        data=b"x",
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(10**9)},
    ) as response:
        assert response.status == 413  # refused before a byte of the body is read
    assert stored_audio(data_dir) == []


async def test_storage_quota_and_max_files_edges(make_client: MakeClient, clips: dict[str, list[bytes]]) -> None:
    """A file that fits the storage quota exactly is taken, one byte more is 507; so is one file past max_files;
    audio the user already has is still answered 200 at the limit."""
    a, b, c = clips["mp3"]
    client = await make_client(storage_quota=f"{len(a) + len(b)}B")
    headers = await sign_in(client)
    assert (await upload(client, headers, fields("A."), a))[0] == 201
    assert (await upload(client, headers, fields("B."), b))[0] == 201  # exactly at the quota
    status, body = await upload(client, headers, fields("C."), c)
    assert (status, body["error"]["code"]) == (507, "quota_exceeded")
    assert "storage quota reached" in body["error"]["message"]
    assert (await upload(client, headers, fields("A."), a))[0] == 200

    client = await make_client(storage_quota=f"{len(a) + len(b) - 1}B")
    headers = await sign_in(client, "sk-test-other")
    assert (await upload(client, headers, fields("A."), a))[0] == 201
    assert (await upload(client, headers, fields("B."), b))[0] == 507  # one byte over

    client = await make_client(max_files="2")
    headers = await sign_in(client, "sk-test-third")
    assert [(await upload(client, headers, fields(t), a))[0] for t in ("1.", "2.", "3.")] == [201, 201, 507]


async def test_the_parts_may_come_in_either_order(client: AppClient, clips: dict[str, list[bytes]]) -> None:
    """Audio first (as a client ordering form fields by name sends it) imports the same as request first."""
    headers = await sign_in(client)
    mp3 = clips["mp3"][0]
    async with client.post(
        "/files/import", data=form(fields("Audio first."), mp3, audio_first=True), headers=headers
    ) as response:
        assert response.status == 201, await response.text()
        imported = await response.json()
    async with client.get(f"/files/{imported['file_id']}", headers=headers) as response:
        assert await response.read() == mp3
    status, again = await upload(client, headers, fields("Audio first."), mp3)
    assert (status, again["file_id"]) == (200, imported["file_id"])
    twice = aiohttp.FormData()
    for _ in range(2):
        twice.add_field("audio", mp3, content_type="application/octet-stream", filename="audio.bin")
    async with client.post("/files/import", data=twice, headers=headers) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_import")


async def test_bad_requests_get_clear_errors(client: AppClient, clips: dict[str, list[bytes]]) -> None:
    """Not multipart, parts missing, bad JSON or fields, a wrong content_hash, no session."""
    headers = await sign_in(client)
    mp3 = clips["mp3"][0]
    async with client.post("/files/import", json=fields("JSON body."), headers=headers) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (415, "unsupported_media_type")
    cases = [
        (form(None, mp3), 400, "invalid_import"),
        (form(fields("No audio."), None), 400, "invalid_import"),
        (form(b"{not json", mp3), 400, "invalid_json"),
        (form(b"[1, 2]", mp3), 400, "invalid_body"),
        (form(fields("Bad voice.", voice="nobody"), mp3), 400, "invalid_voice"),
        (form(fields("Bad hash.", content_hash="0" * 64), mp3), 400, "content_hash_mismatch"),
        (form(fields("Bad hash.", content_hash="nope"), mp3), 400, "invalid_content_hash"),
        (form(json.dumps(fields("x" * (1024 * 1024 + 10))).encode(), mp3), 413, "body_too_large"),
    ]
    for data, status, code in cases:
        async with client.post("/files/import", data=data, headers=headers) as response:
            body = await response.json()
            assert (response.status, body["error"]["code"]) == (status, code), body
    request = fields("Right hash.")
    status, body = await upload(client, headers, {**request, "content_hash": content_hash(request)}, mp3)
    assert status == 201
    status, body = await upload(client, {}, fields("No session."), mp3)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    broken = b'--b\r\nContent-Disposition: form-data; name=request\r\n\r\n{"text": "x"}\r\n--b\r\nContent-Dispo'
    async with client.post(
        "/files/import", data=broken, headers={**headers, "Content-Type": "multipart/form-data; boundary=b"}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] in ("invalid_multipart", "invalid_import")


async def test_a_generation_in_flight_is_kept_and_a_failed_one_replaced(
    client: AppClient, clips: dict[str, list[bytes]], fake: FakeUpstream
) -> None:
    """Importing what is being generated: 202 with that id (the upload is dropped); a failed file is replaced (201)."""
    headers = await sign_in(client)
    fake.gate.clear()
    status, job = await generate(client, headers, text="In flight.")
    assert status == 202
    status, body = await upload(client, headers, fields("In flight.", voice="alloy"), clips["mp3"][0])
    assert (status, body["file_id"], body["status"]) == (202, job["file_id"], "generating")
    fake.gate.set()
    await wait_status(client, headers, job["content_hash"])

    fake.faults.append(Fault(status=400, message="refused"))
    status, failed = await generate(client, headers, text="Failed.")
    await wait_status(client, headers, failed["content_hash"], "failed")
    status, body = await upload(client, headers, fields("Failed.", voice="alloy"), clips["mp3"][1])
    assert status == 201 and body["file_id"] != failed["file_id"] and body["status"] == "ready"
    status, hit = await generate(client, headers, text="Failed.")
    assert (status, hit["file_id"]) == (200, body["file_id"])


def long_mp3(size: int) -> bytes:
    """A valid mp3 of about `size` bytes: the audio frames of a real 160 kbit/s clip, repeated."""
    _, frames = mpeg.scan_all(audio()["speech160_0"])
    block = b"".join(frame.data for frame in frames)
    return block * (size // len(block) + 1)


def peak_rss(pid: int) -> int:
    """Kilobytes of the process's peak resident memory (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1))


@pytest.mark.process
async def test_a_100_mb_file_streams_to_disk(tmp_path: Path, upstream_url: str) -> None:
    """A 100 MB mp3 imports through a real server without its memory growing by the file: it streams to disk."""
    source = tmp_path / "long.mp3"
    source.write_bytes(long_mp3(100_000_000))
    size = source.stat().st_size
    server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "log", env={"SPECCY_MAX_IMPORT_SIZE": "128MB"})
    async with server:
        await server.start()
        async with aiohttp.ClientSession(base_url=server.url) as http:
            headers = await sign_in(http)
            async with http.get("/healthz") as response:
                assert response.status == 200
            before = peak_rss(server.process.pid)
            with source.open("rb") as f:
                started = asyncio.get_running_loop().time()
                status, body = await upload(http, headers, fields("A long book."), f)
                seconds = asyncio.get_running_loop().time() - started
            assert status == 201, body
            grew = peak_rss(server.process.pid) - before
            print(
                f"100 MB import: {seconds:.1f}s ({size / seconds / 1e6:.0f} MB/s), "
                f"server peak memory +{grew / 1024:.0f} MiB"
            )
            assert grew < 40 * 1024, f"peak memory grew by {grew} kB"
            digest = hashlib.sha256()
            async with http.get(body["url"]) as response:
                async for block in response.content.iter_chunked(1024 * 1024):
                    digest.update(block)
            assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
            assert await server.stop() == 0


def write_export(folder: Path, clips: dict[str, list[bytes]]) -> list[dict[str, Any]]:
    """A folder as the app exports it: the audio files and manifest.jsonl, plus every kind of bad line."""
    (folder / "audio").mkdir(parents=True)
    lines: list[Any] = []
    for fmt in FORMATS:
        for i in range(3):
            name = f"audio/{fmt}-{i}.{fmt}"
            (folder / name).write_bytes(clips[fmt][i])
            lines.append({"file": name, **fields(f"Exported {fmt} {i}.", fmt)})
    lines.append(lines[0])  # the same entry twice: the second is "already there"
    (folder / "audio/garbage.mp3").write_bytes(os.urandom(10_000))
    lines.append({"file": "audio/garbage.mp3", **fields("Garbage.")})
    (folder / "audio/cut.flac").write_bytes(clips["flac"][2][:-700])
    lines.append({"file": "audio/cut.flac", **fields("Cut.", "flac")})
    lines.append({"file": "audio/missing.mp3", **fields("Missing.")})
    lines.append({"file": "../outside.mp3", **fields("Outside.")})
    lines.append({"file": "audio/mp3-0.mp3", **fields("Bad voice.", voice="nobody")})
    lines.append("this line is not JSON")
    with (folder / "manifest.jsonl").open("w") as manifest:
        for line in lines:
            manifest.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return [line for line in lines if isinstance(line, dict)]


def run_import(data_dir: Path, upstream_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SPECCYD), "import", *args, "--data-dir", str(data_dir)],
        env=speccyd_env(upstream_url), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.process
async def test_cli_import_beside_a_running_server(
    tmp_path: Path, upstream_url: str, clips: dict[str, list[bytes]], fake: FakeUpstream
) -> None:
    """`speccyd import` while the server runs: good files imported, each refusal listed with its reason, exit 1;
    run again, everything is "already there"; the server answers generate for them from the cache at once."""
    data = tmp_path / "data"
    entries = write_export(tmp_path / "export", clips)
    server = ServerProcess(data, upstream_url, tmp_path / "log")
    async with server, aiohttp.ClientSession() as http:
        await server.start()
        http_base = server.url
        async with http.post(f"{http_base}/auth/verify", json={"openai_token": "sk-test-owner"}) as r:
            session = await r.json()
        headers = {"Authorization": f"Bearer {session['session_token']}"}
        dry = await asyncio.to_thread(
            run_import, data, upstream_url, "--user", session["user_id"][:8], "--dry-run", str(tmp_path / "export")
        )
        assert dry.returncode == 1 and dry.stdout.startswith("would import 18 files"), dry.stdout + dry.stderr
        assert stored_audio(data) == []

        result = await asyncio.to_thread(
            run_import, data, upstream_url, "--user", session["user_id"], str(tmp_path / "export")
        )
        assert result.returncode == 1, result.stdout + result.stderr
        out = result.stdout
        assert re.match(r"imported 18 files \(.+, 0m 1\ds of audio\) for user", out), out
        assert "already there: 1\n" in out and "refused: 6\n" in out
        for reason in (
            "(audio/garbage.mp3): invalid_audio: ",
            "(audio/cut.flac): invalid_audio: invalid flac audio: frame",
            "(audio/missing.mp3): missing_file: audio/missing.mp3 does not exist or is not a file",
            "(../outside.mp3): outside_folder:",
            "(audio/mp3-0.mp3): invalid_voice: voice must be one of",
            ": invalid_json: the line is not JSON",
        ):
            assert reason in out, out
        assert "Traceback" not in result.stderr

        for entry in entries[:18]:
            request = {k: v for k, v in entry.items() if k != "file"}
            async with http.post(f"{http_base}/tts/generate", json=request, headers=headers) as response:
                body = await response.json()
                assert (response.status, body["status"]) == (200, "ready"), body
            async with http.get(f"{http_base}{body['url']}") as response:
                assert await response.read() == (tmp_path / "export" / entry["file"]).read_bytes()
        assert fake.speech_calls == []

        again = await asyncio.to_thread(
            run_import, data, upstream_url, "--user", session["user_id"], str(tmp_path / "export")
        )
        assert again.stdout.startswith("imported 0 files"), again.stdout
        assert "already there: 19\n" in again.stdout
        assert await server.stop() == 0
    assert len(stored_audio(data)) == 18


def test_cli_import_refuses_an_unknown_user_and_a_missing_manifest(tmp_path: Path, upstream_url: str) -> None:
    """An unknown --user or a folder without manifest.jsonl stops at once with one line and exit 2."""
    data = tmp_path / "data"
    assert (
        subprocess.run(
            [str(SPECCYD), "init", "--data-dir", str(data)], env=speccyd_env(), capture_output=True, check=False
        ).returncode
        == 0
    )
    (tmp_path / "export").mkdir()
    result = run_import(data, upstream_url, "--user", "abc", str(tmp_path / "export"))
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"error: {tmp_path / 'export' / 'manifest.jsonl'} does not exist: "
        "export the library from the app first (docs/clients.md)",
    )
    (tmp_path / "export" / "manifest.jsonl").write_text("")
    result = run_import(data, upstream_url, "--user", "abc", str(tmp_path / "export"))
    assert result.returncode == 2 and "matches 0 users" in result.stderr


def test_cli_import_as_root_gives_the_audio_to_the_data_dirs_owner(
    tmp_path: Path, clips: dict[str, list[bytes]]
) -> None:
    """Run as root beside a server that is not (systemd's dynamic user, a container's PUID), the audio it imports
    and any shard directory it makes belong to the data dir's owner, who must be able to read them."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to import as root into a data dir owned by another user")
    data = tmp_path / "data"
    assert (
        subprocess.run([str(SPECCYD), "init", "--data-dir", str(data)], env=speccyd_env(), check=False).returncode == 0
    )
    user = with_db(load_settings(data, env={}), lambda db: db.upsert_user("hash", lambda uid: b"enc", time.time()))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "a.mp3").write_bytes(clips["mp3"][0])
    (tmp_path / "export" / "manifest.jsonl").write_text(json.dumps({"file": "a.mp3", **fields("Owned.")}) + "\n")
    for path in (data, *data.rglob("*")):
        os.chown(path, 4321, 4321)
    result = run_import(data, "http://127.0.0.1:9/v1", "--user", user, str(tmp_path / "export"))
    assert result.returncode == 0, result.stdout + result.stderr
    [audio_file] = [p for p in (data / "audio").rglob("*.mp3")]
    assert (audio_file.stat().st_uid, audio_file.parent.stat().st_uid) == (4321, 4321)
