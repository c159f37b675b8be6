"""Clients generated from the contract: openapi-python-client downloads a file, a playlist and a segment with
it; openapi-generator's swift6 generator types the audio as binary. Generated code is cached under .cache/
by the document's hash, so only a changed document pays for a generator run (the JVM takes seconds)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from speccyd.web.handlers.contract import openapi_document
from tests.conftest import AppClient, sign_in, wait_status
from tests.fake_upstream import FakeUpstream
from tests.playback_helpers import clips
from tests.test_playback import LIMIT, document

CACHE = Path(__file__).parents[1] / ".cache" / "openapi" / hashlib.sha256(openapi_document()).hexdigest()[:16]
# The audio and playlist media types, as openapi-python-client is told to treat them (its documented
# `content_type_overrides`): audio as bytes (the schemas say `format: binary`), the playlist as text.
PYTHON_CONFIG = (
    "content_type_overrides:\n"
    + "".join(
        f"  {media}: application/octet-stream\n"
        for media in ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm")
    )
    + "  application/vnd.apple.mpegurl: text/plain\n"
)


async def _generate(name: str, *command: str, timeout: float = 180) -> Path:
    """Run a generator once per document into CACHE/name (atomically: a cut run leaves nothing)."""
    target = CACHE / name
    if target.is_dir():
        return target
    tool = shutil.which(command[0])
    if tool is None:
        pytest.skip(f"{command[0]} is not installed (pip install -e '.[test]')")
    work = CACHE / f"{name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "document.json").write_bytes(openapi_document())
    (work / "config.yaml").write_text(PYTHON_CONFIG)
    process = await asyncio.create_subprocess_exec(
        tool, *command[1:], cwd=work, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode(errors="replace")[-4000:]
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    return target


async def test_a_generated_python_client_downloads_a_file_a_playlist_and_a_segment(
    make_client: Any, fake: FakeUpstream
) -> None:
    """openapi-python-client's client, from the document alone: the audio and a segment come back as bytes
    (File), the playlist as text, the timeline as a typed model; they match what the server serves."""
    out = await _generate(
        "python",
        "openapi-python-client", "generate", "--path", "document.json", "--output-path", "speccyd_client",
        "--meta", "none", "--config", "config.yaml",
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        api = importlib.import_module("speccyd_client.api.default")
        generated = importlib.import_module("speccyd_client")
        importlib.import_module("speccyd_client.api.default.download")
        importlib.import_module("speccyd_client.api.default.playlist")
        importlib.import_module("speccyd_client.api.default.segment")
        importlib.import_module("speccyd_client.api.default.timeline")
    finally:
        sys.path.remove(str(out))
    fake.clips = clips()
    server: AppClient = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(server)
    response = await server.post("/tts/generate", json={"text": document(6)}, headers=headers)
    body = await response.json()
    await wait_status(server, headers, body["content_hash"])
    token = headers["Authorization"].split(" ", 1)[1]
    async with generated.AuthenticatedClient(base_url=str(server.make_url("")).rstrip("/"), token=token) as client:
        audio = await api.download.asyncio(client=client, file_id=body["file_id"])
        assert isinstance(audio, generated.types.File)
        assert audio.payload.read() == await (await server.get(body["url"])).read()
        playlist = await api.playlist.asyncio(client=client, file_id=body["file_id"])
        assert isinstance(playlist, str) and playlist.startswith("#EXTM3U")
        uri = next(line for line in playlist.splitlines() if line.startswith("segments/"))
        name, query = uri.removeprefix("segments/").split("?")
        exp, sig = (part.split("=", 1)[1] for part in query.split("&"))
        segment = await api.segment.asyncio(client=client, file_id=body["file_id"], segment=name, exp=exp, sig=sig)
        assert isinstance(segment, generated.types.File)
        assert segment.payload.read().startswith(b"ID3")
        timeline = await api.timeline.asyncio(client=client, file_id=body["file_id"])
        assert timeline.complete is True and len(timeline.segments) > 1


async def test_openapi_generators_swift6_types_audio_as_binary_data() -> None:
    """The swift6 client returns the audio and segments as binary (a file URL of the bytes), the playlist as a
    String and the timeline as its model: what an app needs to hand each to AVFoundation."""
    if shutil.which("java") is None:
        pytest.skip(
            "java is not installed (Debian: apt-get install -y default-jre-headless); openapi-generator needs it"
        )
    out = await _generate(
        "swift6",
        "openapi-generator-cli", "generate", "-g", "swift6", "-i", "document.json", "-o", "swift",
        "--global-property", "apis,models",
    )  # fmt: skip
    api = (out / "swift" / "Sources" / "OpenAPIClient" / "APIs" / "DefaultAPI.swift").read_text()

    def returns(operation: str) -> str:
        line = next(line for line in api.splitlines() if f"class func {operation}(" in line)
        return line.rsplit("->", 1)[1].strip(" {")

    assert returns("download") == "URL"
    assert returns("segment") == "URL"
    assert returns("playlist") == "String"
    assert returns("timeline") == "Timeline"
    speech = (out / "swift" / "Sources" / "OpenAPIClient" / "APIs" / "OpenAICompatibleAPI.swift").read_text()
    assert "createSpeech(speechRequest: SpeechRequest" in speech and "-> URL {" in speech
