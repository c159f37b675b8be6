"""The OpenAPI contract: the document covers every route, real responses validate against it, and a
schemathesis run against a live server finds no server errors and no responses that break it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator

from speccyd.generation.speech import MODELS, VOICES
from speccyd.media.formats import FORMATS
from speccyd.web.handlers.contract import openapi_document
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status
from tests.fake_upstream import Fault
from tests.playback_helpers import clips
from tests.test_playback import document

DOC: dict[str, Any] = json.loads(openapi_document())
# The schemathesis failures that are intended behaviour, each explained in docs/security.md ("Contract").
BASELINE = Path(__file__).with_name("schemathesis-baseline.json")
METHODS = ("get", "post", "put", "patch", "delete")


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The documented template and operation that a concrete request path matches."""
    for template, item in DOC["paths"].items():
        pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def check_contract(method: str, path: str, status: int, content_type: str | None, body: bytes) -> None:
    """Fail unless the response is one the document describes, with a body its schema accepts."""
    template, operation = operation_for(method, path)
    responses = operation["responses"]
    described = responses.get(str(status)) or responses.get("default")
    assert described is not None, f"{method} {template}: status {status} is not documented"
    content = described.get("content")
    if content is None:
        assert body == b"", f"{method} {template} {status}: body where none is documented"
        return
    media = (content_type or "").split(";")[0].strip()
    assert media in content, f"{method} {template} {status}: {media} is not one of {sorted(content)}"
    if media == "application/json":
        schema = {**content[media]["schema"], "components": DOC["components"]}
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        validator.validate(json.loads(body))


async def call(client: AppClient, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    response = await client.request(method, path, **kwargs)
    body = await response.read()
    check_contract(method, path.split("?")[0], response.status, response.headers.get("Content-Type"), body)
    return response.status, body


def test_document_is_openapi_31_with_valid_schemas() -> None:
    """The document declares OpenAPI 3.1 and every schema in it is valid JSON Schema 2020-12."""
    assert DOC["openapi"].startswith("3.1")
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_documented_choices_match_the_code() -> None:
    """Voices, models and formats in the document are exactly the ones speccyd accepts."""
    schemas = DOC["components"]["schemas"]
    assert schemas["Voice"]["enum"] == list(VOICES)
    assert schemas["Model"]["anyOf"][0]["enum"] == list(MODELS)
    assert schemas["Format"]["enum"] == list(FORMATS)


async def test_every_route_is_documented_and_every_operation_exists(client: AppClient) -> None:
    """The router and the document list the same operations: nothing undocumented, nothing imaginary."""
    app: web.Application = client.server.app
    routed = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        routed.add((route.method.lower(), route.resource.canonical))
    documented = {(m, path) for path, item in DOC["paths"].items() for m in item if m in METHODS}
    assert routed == documented


async def test_served_document_is_the_one_in_the_repository(client: AppClient) -> None:
    """GET /openapi.json serves speccyd/openapi.json byte for byte."""
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert await response.read() == (Path(__file__).parents[1] / "speccyd" / "openapi.json").read_bytes()


async def test_real_responses_validate_against_the_document(client: AppClient) -> None:
    """Every endpoint's successes and typical errors, from a live server, match the document."""
    await call(client, "GET", "/healthz")
    await call(client, "GET", "/openapi.json")
    await call(client, "POST", "/auth/verify", json={"openai_token": "sk-wrong"})
    await call(client, "POST", "/auth/verify", data=b"not json")
    headers = await sign_in(client)
    status, body = await call(client, "POST", "/tts/generate", json={"text": "Contract"}, headers=headers)
    assert status == 202
    created = json.loads(body)
    await call(client, "GET", f"/files/{created['file_id']}", headers=headers)  # 202 or the audio
    await wait_status(client, headers, created["content_hash"])
    await call(client, "POST", "/tts/generate", json={"text": "Contract"}, headers=headers)  # 200 cache hit
    await call(client, "POST", "/tts/generate", json={"text": "x", "voice": "nobody"}, headers=headers)
    await call(client, "POST", "/tts/generate", json={"text": "x"})
    await call(client, "GET", f"/tts/{created['content_hash']}/status", headers=headers)
    await call(client, "GET", f"/tts/{'0' * 64}/status", headers=headers)
    await call(client, "GET", f"/files/{created['file_id']}", headers=headers)
    await call(client, "GET", f"/files/{created['file_id']}", headers={**headers, "Range": "bytes=0-99"})
    await call(client, "GET", f"/files/{created['file_id']}", headers={**headers, "Range": "bytes=99999-"})
    await call(client, "GET", f"/files/{created['file_id']}?exp=1&sig=bad")
    await call(client, "GET", f"/files/{created['file_id']}/meta", headers=headers)
    await call(client, "GET", "/files?limit=1", headers=headers)
    await call(client, "GET", "/files?since=999999", headers=headers)
    await call(client, "GET", "/files?limit=abc", headers=headers)
    await call(client, "GET", "/user/usage", headers=headers)
    fake_fail = await client.post("/tts/generate", json={"text": "fails"}, headers=headers)
    assert fake_fail.status == 202
    await call(client, "DELETE", f"/tts/{created['file_id']}", headers=headers)
    await call(client, "DELETE", f"/tts/{created['file_id']}", headers=headers)
    await call(client, "GET", f"/files/{created['file_id']}/meta", headers=headers)

    v1 = {"Authorization": headers["Authorization"]}
    speech = {"model": "tts-1", "voice": "alloy", "input": "Contract v1"}
    await call(client, "POST", "/v1/audio/speech", json=speech, headers=v1)
    await call(client, "POST", "/v1/audio/speech", json={**speech, "speed": 0}, headers=v1)
    await call(client, "POST", "/v1/audio/speech", json=speech, headers={"Authorization": "Bearer sk-wrong"})
    await call(client, "POST", "/v1/audio/speech", json=speech)
    await call(client, "GET", "/v1/models")
    await call(client, "GET", "/v1/models/tts-1")
    await call(client, "GET", "/v1/models/dall-e")
    await call(client, "GET", "/v1/audio/voices")


async def test_playback_responses_validate_against_the_document(make_client: Any, fake: Any) -> None:
    """Playlists (live and complete), segments (whole, ranged, 304, 416), timelines and positions, from a live
    server, and their errors, match the document."""
    fake.clips = clips()
    client = await make_client(upstream_max_chars=200)
    headers = await sign_in(client)
    release = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=release, match="Paragraph 3 "))
    _, body = await call(client, "POST", "/tts/generate", json={"text": document(6)}, headers=headers)
    created = json.loads(body)
    file_path = f"/files/{created['file_id']}"
    await eventually(lambda: any("Paragraph 3 " in str((c.body or {})["input"]) for c in fake.speech_calls))
    await call(client, "GET", created["playlist_url"])
    await call(client, "GET", f"{file_path}/timeline", headers=headers)
    await call(client, "GET", file_path, headers={**headers, "Range": "bytes=0-99"})
    release.set()
    await wait_status(client, headers, created["content_hash"])
    ready = json.loads((await call(client, "GET", f"/tts/{created['content_hash']}/status", headers=headers))[1])
    _, playlist = await call(client, "GET", ready["playlist_url"])
    segment = next(line for line in playlist.decode().splitlines() if line.startswith("segments/"))
    uri = f"{file_path}/{segment}"
    _, whole = await call(client, "GET", uri)
    await call(client, "GET", uri, headers={"Range": "bytes=0-9"})
    await call(client, "GET", uri, headers={"Range": f"bytes={len(whole)}-"})
    etag = (await client.get(uri)).headers["ETag"]
    await call(client, "GET", uri, headers={"If-None-Match": etag})
    await call(client, "GET", f"{file_path}/segments/{'0' * 16}-0.mp3", headers=headers)
    await call(client, "GET", f"{file_path}/timeline", headers=headers)
    await call(client, "GET", f"{file_path}/meta", headers=headers)
    await call(client, "GET", "/files", headers=headers)
    await call(client, "PUT", f"{file_path}/position", json={"position_s": 3.5, "device": "iPhone"}, headers=headers)
    await call(client, "PUT", f"{file_path}/position", json={"position_s": -3}, headers=headers)
    await call(client, "PUT", f"{file_path}/position", json={"position_s": 1})
    await call(client, "GET", f"{file_path}/meta", headers=headers)
    _, wav = await call(client, "POST", "/tts/generate", json={"text": "Wave.", "format": "wav"}, headers=headers)
    await call(client, "GET", f"/files/{json.loads(wav)['file_id']}/playlist.m3u8", headers=headers)
    await call(client, "GET", f"/files/{'0' * 32}/playlist.m3u8", headers=headers)


def test_audio_and_segments_are_binary() -> None:
    """Every audio response is `format: binary`, so generated clients hand back bytes, not decoded text."""
    found = 0
    for item in DOC["paths"].values():
        for operation in item.values():
            for response in operation.get("responses", {}).values():
                for media, content in response.get("content", {}).items():
                    if media.startswith("audio/"):
                        assert content["schema"]["format"] == "binary", media
                        found += 1
    assert found >= 16


async def test_failed_generation_responses_validate(client: AppClient, fake: Any) -> None:
    """A failed file's status, download and /v1 answer also match the document."""
    fake.faults.append(Fault(status=400, message="refused"))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="Refused")
    await wait_status(client, headers, body["content_hash"], "failed")
    await call(client, "GET", f"/tts/{body['content_hash']}/status", headers=headers)
    await call(client, "GET", f"/files/{body['file_id']}", headers=headers)
    await call(client, "GET", "/files", headers=headers)
    fake.faults.append(Fault(status=400, message="refused"))
    await call(
        client,
        "POST",
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": "Refused v1"},
        headers=headers,
    )


async def test_schemathesis_finds_no_server_errors_or_schema_violations(make_client: Any, tmp_path: Path) -> None:
    """schemathesis with every check (positive and negative cases, stateful links, auth) against the live server
    on loopback, rate limits relaxed, finds nothing but the failures docs/security.md documents as intended
    (tests/schemathesis-baseline.json)."""
    client = await make_client(auth_rate_limit=1_000_000)
    headers = await sign_in(client)
    base = str(client.make_url("")).rstrip("/")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
        "--url", base,
        "--header", f"Authorization:{headers['Authorization']}",
        "--checks", "all",
        "--max-examples", "10", "--seed", "6", "--workers", "1",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--request-timeout", "10",
        "--baseline", str(BASELINE), *(["--baseline-update"] if os.environ.get("SPECCY_BASELINE_UPDATE") else []),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, output.decode(errors="replace")[-6000:]


@pytest.mark.parametrize("path", ["/healthz", "/v1/models"])
async def test_public_operations_declare_no_security(path: str) -> None:
    """Operations that need no sign-in say so, so generated clients do not demand a token."""
    _, operation = operation_for("GET", path)
    assert operation["security"] == []


def test_the_version_comes_from_one_place() -> None:
    """The repository's OpenAPI document says the same version as speccyd.__version__ (the package's one
    version, which pyproject reads too), and so does the served one."""
    import tomllib

    from speccyd import __version__

    repo = json.loads((Path(__file__).parents[1] / "speccyd" / "openapi.json").read_text())
    assert repo["info"]["version"] == __version__ == DOC["info"]["version"]
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "speccyd.__version__"}


async def test_empty_since_and_limit_are_400s(client: AppClient) -> None:
    """`since=` and `limit=` with no value are refused as the contract's pattern refuses them, not read as absent."""
    headers = await sign_in(client)
    for query, code in (("since=", "invalid_cursor"), ("limit=", "invalid_limit"), ("since=&limit=", "invalid_cursor")):
        status, body = await call(client, "GET", f"/files?{query}", headers=headers)
        assert status == 400 and json.loads(body)["error"]["code"] == code, query


async def test_nulls_in_an_openai_speech_request_mean_not_given(client: AppClient) -> None:
    """instructions, response_format, speed and stream_format may be null (the document says so): the defaults."""
    headers = await sign_in(client)
    body = {"model": "tts-1", "voice": "alloy", "input": "Nulls", "instructions": None, "response_format": None,
            "speed": None, "stream_format": None}  # fmt: skip
    status, _ = await call(client, "POST", "/v1/audio/speech", json=body, headers=headers)
    assert status == 200
    schema = DOC["components"]["schemas"]["SpeechRequest"]
    for field in ("instructions", "speed", "stream_format"):
        assert "null" in schema["properties"][field]["type"]
