"""Bad input gets a clear JSON error with the right status, and never reaches the upstream."""

from __future__ import annotations

import io
from typing import Any

import pytest

from speccyd.generation.speech import max_body_bytes
from tests.conftest import AppClient, sign_in
from tests.fake_upstream import FakeUpstream

CASES: list[tuple[dict[str, Any], str]] = [
    ({}, "invalid_text"),
    ({"text": ""}, "invalid_text"),
    ({"text": "   \n"}, "invalid_text"),
    ({"text": 12}, "invalid_text"),
    ({"text": ["a"]}, "invalid_text"),
    ({"text": "x" * 100_001}, "text_too_long"),
    ({"text": "x" * 4097, "format": "opus"}, "format_not_joinable"),
    ({"text": "hi", "voice": "darth"}, "invalid_voice"),
    ({"text": "hi", "voice": None}, "invalid_voice"),
    ({"text": "hi", "model": "tts-2"}, "invalid_model"),
    ({"text": "hi", "format": "ogg"}, "invalid_format"),
    ({"text": "hi", "format": 3}, "invalid_format"),
    ({"text": "hi", "speed": 0.2}, "invalid_speed"),
    ({"text": "hi", "speed": 4.01}, "invalid_speed"),
    ({"text": "hi", "speed": "1.0"}, "invalid_speed"),
    ({"text": "hi", "speed": True}, "invalid_speed"),
    ({"text": "hi", "speed": None}, "invalid_speed"),
    ({"text": "hi", "instructions": "calm"}, "invalid_instructions"),
    ({"text": "hi", "model": "gpt-4o-mini-tts", "instructions": 5}, "invalid_instructions"),
    ({"text": "hi", "model": "gpt-4o-mini-tts", "instructions": "x" * 4097}, "invalid_instructions"),
]


@pytest.mark.parametrize(("body", "code"), CASES, ids=[c for _, c in CASES])
async def test_generate_validation(client: AppClient, fake: FakeUpstream, body: dict[str, Any], code: str) -> None:
    """Each validation rule answers 400 with its own code and makes no upstream call."""
    headers = await sign_in(client)
    response = await client.post("/tts/generate", json=body, headers=headers)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["message"]
    assert fake.speech_calls == []


async def test_max_text_chars_setting(make_client: Any) -> None:
    """Text over max_text_chars is refused with text_too_long naming the limit."""
    client = await make_client(max_text_chars=10)
    headers = await sign_in(client)
    response = await client.post("/tts/generate", json={"text": "x" * 11}, headers=headers)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "text_too_long"
    assert "10" in error["message"]


async def test_boundary_values_are_accepted(client: AppClient) -> None:
    """Exactly 4096 characters, speed 0.25 and 4.0, and every voice are valid."""
    headers = await sign_in(client)
    for body in ({"text": "x" * 4096}, {"text": "a", "speed": 0.25}, {"text": "b", "speed": 4}):
        response = await client.post("/tts/generate", json=body, headers=headers)
        assert response.status == 202, body
    for voice in ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"):
        response = await client.post("/tts/generate", json={"text": "v", "voice": voice}, headers=headers)
        assert response.status in (200, 202), voice


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b"\xff\xfe", b"", b"[" * 100_000 + b"]" * 100_000, b"NaN"],
    ids=["truncated", "text", "binary", "empty", "deep", "nan"],
)
async def test_malformed_json_is_400(client: AppClient, raw: bytes) -> None:
    """Unparseable bodies are 400 invalid_json (or invalid_body), never 500."""
    headers = await sign_in(client)
    response = await client.post("/tts/generate", data=raw, headers={**headers, "Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] in {"invalid_json", "invalid_body"}


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null"])
async def test_body_must_be_an_object(client: AppClient, raw: bytes) -> None:
    """Valid JSON that is not an object is 400 invalid_body."""
    headers = await sign_in(client)
    response = await client.post("/tts/generate", data=raw, headers=headers)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_body"


async def test_oversized_body_is_413(client: AppClient) -> None:
    """A body over the limit (max_body_bytes of max_text_chars) is 413 body_too_large, on every JSON endpoint."""
    headers = await sign_in(client)
    big = b'{"text": "' + b"x" * max_body_bytes(100_000) + b'"}'
    for path in ("/tts/generate", "/auth/verify"):
        response = await client.post(path, data=io.BytesIO(big), headers=headers)
        assert response.status == 413, path
        assert (await response.json())["error"]["code"] == "body_too_large"


async def test_unknown_route_and_wrong_method(client: AppClient) -> None:
    """Unknown routes are 404 and wrong methods 405, both in the JSON envelope."""
    response = await client.get("/nope")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await client.get("/tts/generate")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


async def test_generate_requires_a_session(client: AppClient) -> None:
    """Generating without a session token is 401."""
    response = await client.post("/tts/generate", json={"text": "hi"})
    assert response.status == 401


async def test_generate_rate_limit(make_client: Any) -> None:
    """Past `rate_limit` generate requests per minute a user gets 429 with Retry-After; others are unaffected."""
    client = await make_client(rate_limit=3)
    alice = await sign_in(client, "sk-test-alice")
    bob = await sign_in(client, "sk-test-bob")
    for i in range(3):
        response = await client.post("/tts/generate", json={"text": f"t{i}"}, headers=alice)
        assert response.status == 202
    response = await client.post("/tts/generate", json={"text": "t4"}, headers=alice)
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["code"] == "rate_limited"
    response = await client.post("/tts/generate", json={"text": "t1"}, headers=bob)
    assert response.status == 202


async def test_healthz(client: AppClient) -> None:
    """/healthz answers ok with the version after checking the database."""
    from speccyd import __version__

    response = await client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert (body["status"], body["version"]) == ("ok", __version__)


async def test_a_bug_is_a_500_envelope_with_the_traceback_only_in_the_log(
    aiohttp_client: Any, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception becomes 500 internal_error in speccyd's (or under /v1, OpenAI's) envelope;
    the client learns nothing of it, the log has the traceback."""
    from aiohttp import web

    from speccyd.app import create_app

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals: /var/lib/speccyd/x")

    app = create_app(make_settings())
    app.router.add_get("/broken", broken)
    app.router.add_get("/v1/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/broken")
    assert response.status == 500
    assert await response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    openai = await client.get("/v1/broken")
    assert openai.status == 500
    assert (await openai.json())["error"] == {
        "message": "internal server error", "type": "server_error", "param": None, "code": "internal_error",
    }  # fmt: skip
    logged = [r for r in caplog.records if r.exc_info and "secret internals" in str(r.exc_info[1])]
    assert len(logged) == 2 and "unhandled error in GET /broken" in logged[0].getMessage()
