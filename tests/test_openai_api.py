"""/v1: OpenAI's speech API through speccyd's cache, exercised with the real openai SDK over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from speccyd.generation.speech import MODELS, VOICES
from tests.clock import FakeClock
from tests.conftest import AppClient, eventually, sign_in
from tests.fake_upstream import FakeUpstream, Fault

KEY = "sk-test-alice"


@pytest.fixture
async def make_sdk(client: AppClient) -> AsyncIterator[Callable[[str], openai.AsyncOpenAI]]:
    """OpenAI SDK clients pointed at the speccyd under test; retries off so each call is one request."""
    made: list[openai.AsyncOpenAI] = []

    def make(api_key: str = KEY) -> openai.AsyncOpenAI:
        sdk = openai.AsyncOpenAI(api_key=api_key, base_url=str(client.make_url("/v1")), max_retries=0, timeout=10)
        made.append(sdk)
        return sdk

    yield make
    for sdk in made:
        await sdk.close()


def upstream_audio(fake: FakeUpstream, index: int = 0) -> bytes:
    return FakeUpstream.audio_for(fake.speech_calls[index].body or {}, fake.audio_size)


async def test_sdk_gets_upstream_bytes_and_second_call_is_cached(
    make_sdk: Callable[[str], openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    """create() returns the upstream's exact bytes; the same request again makes no upstream call at all."""
    sdk = make_sdk(KEY)
    first = await sdk.audio.speech.create(model="tts-1", voice="nova", input="Hello from the SDK.")
    assert first.content == upstream_audio(fake)
    assert first.response.headers["content-type"] == "audio/mpeg"
    calls_before = len(fake.calls)
    second = await sdk.audio.speech.create(model="tts-1", voice="nova", input="Hello from the SDK.")
    assert second.content == first.content
    assert len(fake.calls) == calls_before  # no speech call, and the key check was served from the cache
    assert len(fake.speech_calls) == 1


async def test_sdk_parameters_reach_the_upstream(
    make_sdk: Callable[[str], openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    """response_format, speed and instructions are OpenAI's names for speccyd's format, speed, instructions."""
    sdk = make_sdk(KEY)
    audio = await sdk.audio.speech.create(
        model="gpt-4o-mini-tts", voice="coral", input="Params", response_format="wav", speed=1.5,
        instructions="whisper",
    )  # fmt: skip
    assert audio.response.headers["content-type"] == "audio/wav"
    assert fake.speech_calls[0].body == {
        "input": "Params", "model": "gpt-4o-mini-tts", "voice": "coral", "response_format": "wav",
        "speed": 1.5, "instructions": "whisper",
    }  # fmt: skip


async def test_streaming_response_yields_the_audio(
    make_sdk: Callable[[str], openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    """with_streaming_response streams the same bytes chunk by chunk."""
    fake.audio_size = 200_000
    sdk = make_sdk(KEY)
    async with sdk.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="Stream") as r:
        assert r.status_code == 200
        chunks = [chunk async for chunk in r.iter_bytes()]
    assert b"".join(chunks) == upstream_audio(fake)


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("voice", "nobody", "voice"),
        ("model", "tts-9", "model"),
        ("input", " ", "input"),
        ("input", "x" * 100_001, "input"),  # past max_text_chars; longer than 4096 is split, not refused
        ("response_format", "mp4", "response_format"),
        ("speed", 9.0, "speed"),
    ],
)
async def test_bad_input_raises_bad_request(
    make_sdk: Callable[[str], openai.AsyncOpenAI], fake: FakeUpstream, field: str, value: object, param: str
) -> None:
    """Invalid fields raise openai.BadRequestError naming the field in `param`, and reach no upstream."""
    body: dict[str, object] = {"model": "tts-1", "voice": "alloy", "input": "Hi", field: value}
    with pytest.raises(openai.BadRequestError) as caught:
        await make_sdk(KEY).audio.speech.create(**body)  # type: ignore[arg-type]
    assert caught.value.param == param
    assert isinstance(caught.value.body, dict)
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert caught.value.body["type"] == "invalid_request_error"
    assert fake.speech_calls == []


async def test_missing_required_field_is_a_bad_request(client: AppClient) -> None:
    """OpenAI requires model, input and voice; a body without one is a 400 naming it."""
    response = await client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "Hi"}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"]["param"] == "voice"
    assert body["error"]["code"] == "missing_required_parameter"


async def test_bad_key_raises_authentication_error(make_sdk: Callable[[str], openai.AsyncOpenAI]) -> None:
    """A key the upstream refuses raises openai.AuthenticationError with OpenAI's invalid_api_key code."""
    with pytest.raises(openai.AuthenticationError) as caught:
        await make_sdk("sk-wrong-key").audio.speech.create(model="tts-1", voice="alloy", input="Hi")
    assert caught.value.code == "invalid_api_key"


async def test_missing_authorization_is_401_in_openai_envelope(client: AppClient) -> None:
    """Without Authorization the answer is a 401 in OpenAI's envelope, not speccyd's."""
    response = await client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi"})
    assert response.status == 401
    assert set((await response.json())["error"]) == {"message", "type", "param", "code"}


async def test_session_token_works_as_api_key(
    client: AppClient, make_sdk: Callable[[str], openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    """A speccyd session token is accepted in place of the OpenAI key, for the same user's cache."""
    first = await make_sdk(KEY).audio.speech.create(model="tts-1", voice="alloy", input="Shared")
    token = (await sign_in(client, KEY))["Authorization"].removeprefix("Bearer ")
    again = await make_sdk(token).audio.speech.create(model="tts-1", voice="alloy", input="Shared")
    assert again.content == first.content
    assert len(fake.speech_calls) == 1


async def test_openai_key_maps_to_the_signed_in_user(client: AppClient, fake: FakeUpstream) -> None:
    """Audio made through /v1 with a key appears in the library of the user who signs in with that key."""
    response = await client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "echo", "input": "In my library"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status == 200
    file_id = response.headers["X-Speccy-File-Id"]
    headers = await sign_in(client, KEY)
    library = await (await client.get("/files", headers=headers)).json()
    assert [f["file_id"] for f in library["files"]] == [file_id]
    assert library["files"][0]["voice"] == "echo"


async def test_sign_in_primes_the_key_cache(client: AppClient, fake: FakeUpstream) -> None:
    """After /auth/verify checked a key, /v1 requests with that key ask the upstream nothing more."""
    await sign_in(client, KEY)
    checks = len([c for c in fake.calls if c.path.endswith("/models")])
    for _ in range(3):
        response = await client.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": "Primed"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status == 200
    assert len([c for c in fake.calls if c.path.endswith("/models")]) == checks
    assert len(fake.speech_calls) == 1


async def test_key_verification_is_cached_for_a_bounded_time(
    make_client: Callable[..., Awaitable[AppClient]], fake: FakeUpstream, clock: FakeClock
) -> None:
    """A revoked key keeps working only until the cached verification expires, then gets a 401."""
    client = await make_client(clock, key_cache_ttl="5m")
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tts-1", "voice": "alloy", "input": "Cached key"}
    assert (await client.post("/v1/audio/speech", json=body, headers=headers)).status == 200
    fake.revoked.add(KEY)
    clock.advance(299)
    assert (await client.post("/v1/audio/speech", json=body, headers=headers)).status == 200
    clock.advance(2)
    assert (await client.post("/v1/audio/speech", json=body, headers=headers)).status == 401
    assert len(fake.speech_calls) == 1


async def test_failed_generation_raises_server_error(
    make_sdk: Callable[[str], openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    """An upstream failure during generation reaches the SDK as a 502 with the upstream's message."""
    fake.faults.append(Fault("wrong_type"))
    with pytest.raises(openai.InternalServerError) as caught:
        await make_sdk(KEY).audio.speech.create(model="tts-1", voice="alloy", input="Refused")
    assert caught.value.status_code == 502
    assert "upstream sent text/html instead of audio" in caught.value.message


async def test_slow_generation_times_out_with_504_then_is_collected(
    make_client: Callable[..., Awaitable[AppClient]], fake: FakeUpstream
) -> None:
    """Past speech_wait the request gets a 504; the generation goes on, and a retry collects the audio."""
    client = await make_client(speech_wait="200ms")
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tts-1", "voice": "alloy", "input": "Slow"}
    fake.gate.clear()
    response = await client.post("/v1/audio/speech", json=body, headers=headers)
    assert response.status == 504
    assert (await response.json())["error"]["type"] == "server_error"
    fake.gate.set()

    async def collected() -> bytes | None:
        retry = await client.post("/v1/audio/speech", json=body, headers=headers)
        return await retry.read() if retry.status == 200 else None

    assert await eventually(collected, what="the audio") == upstream_audio(fake)
    assert len(fake.speech_calls) == 1


async def test_models_and_voices_lists(client: AppClient, make_sdk: Callable[[str], openai.AsyncOpenAI]) -> None:
    """/v1/models lists the accepted TTS models (SDK-readable); /v1/audio/voices lists id and name."""
    sdk = make_sdk(KEY)
    assert [m.id async for m in sdk.models.list()] == list(MODELS)
    assert (await sdk.models.retrieve("tts-1-hd")).id == "tts-1-hd"
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("whisper-1")
    voices = await (await client.get("/v1/audio/voices")).json()
    assert [v["id"] for v in voices["data"]] == list(VOICES)
    assert voices["data"][0] == {"id": "alloy", "name": "Alloy"}


async def test_unknown_v1_path_is_404_in_openai_envelope_elsewhere_speccyd(client: AppClient) -> None:
    """Errors under /v1 use OpenAI's envelope; the rest of the API keeps speccyd's."""
    v1 = await client.get("/v1/nothing-here")
    assert v1.status == 404
    assert (await v1.json())["error"]["type"] == "invalid_request_error"
    other = await client.get("/nothing-here")
    assert set((await other.json())["error"]) == {"code", "message"}


async def test_speech_streams_while_it_is_generated(client: AppClient, fake: FakeUpstream) -> None:
    """A cache miss answers as soon as audio flows: the first half arrives while the upstream still holds the rest."""
    fake.audio_size = 40_000
    resume = asyncio.Event()
    fake.faults.append(Fault("pause_mid", pause=resume))
    response = await client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": "Stream me"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/mpeg"
    first = await response.content.readexactly(fake.audio_size // 4)
    assert not resume.is_set()  # these bytes came before the upstream finished
    resume.set()
    rest = await response.read()
    assert first + rest == upstream_audio(fake)


# --- any OpenAI-compatible upstream (issue 11) ---


async def test_dated_model_snapshots_are_accepted(client: AppClient, fake: FakeUpstream) -> None:
    """OpenAI's dated snapshots (gpt-4o-mini-tts-2025-12-15) are accepted, instructions included, and reach the
    upstream as sent; anything else that merely starts like a model is refused."""
    headers = await sign_in(client)
    snapshot = "gpt-4o-mini-tts-2025-12-15"
    response = await client.post(
        "/tts/generate", json={"text": "Snap", "model": snapshot, "instructions": "calmly"}, headers=headers
    )
    assert response.status == 202, await response.text()
    await eventually(lambda: fake.speech_calls, what="the upstream call")
    assert (fake.speech_calls[0].body or {})["model"] == snapshot
    assert (await client.get(f"/v1/models/{snapshot}")).status == 200
    for bad in ("gpt-4o-mini-tts-latest", "gpt-4o-mini-tts-2025-12", "tts-1-2025-12-15x", "-2025-12-15"):
        answer = await client.post("/tts/generate", json={"text": "x", "model": bad}, headers=headers)
        assert answer.status == 400 and (await answer.json())["error"]["code"] == "invalid_model", bad
        assert (await client.get(f"/v1/models/{bad}")).status == 404


async def test_models_and_voices_are_settings(make_client: Any, fake: FakeUpstream) -> None:
    """With Kokoro-FastAPI's names configured, requests use them, /v1/models, /v1/audio/voices and the served
    OpenAPI document list them, and OpenAI's names are refused."""
    client = await make_client(models="kokoro", voices="af_bella, af_sky+af_bella", instruction_models="")
    headers = await sign_in(client)
    response = await client.post("/tts/generate", json={"text": "Kokoro", "voice": "af_sky+af_bella"}, headers=headers)
    assert response.status == 202, await response.text()
    await eventually(lambda: fake.speech_calls, what="the upstream call")
    assert {k: (fake.speech_calls[0].body or {})[k] for k in ("model", "voice")} == {
        "model": "kokoro", "voice": "af_sky+af_bella"
    }  # fmt: skip
    for body, code in (
        ({"text": "x", "voice": "alloy"}, "invalid_voice"),
        ({"text": "x", "model": "tts-1"}, "invalid_model"),
        ({"text": "x", "instructions": "softly"}, "invalid_instructions"),
    ):
        answer = await client.post("/tts/generate", json=body, headers=headers)
        assert (await answer.json())["error"]["code"] == code
    assert [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]] == ["kokoro"]
    voices = [v["id"] for v in (await (await client.get("/v1/audio/voices")).json())["data"]]
    assert voices == ["af_bella", "af_sky+af_bella"]
    doc = await (await client.get("/openapi.json")).json()
    assert doc["components"]["schemas"]["Voice"]["enum"] == voices
    assert doc["components"]["schemas"]["Model"]["anyOf"][0]["enum"] == ["kokoro"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "alloy", "input": "x"}, "model"),
        ({"model": "tts-1", "voice": "alloy"}, "input"),
        ({"model": "tts-1", "input": "x"}, "voice"),
        ({"model": "tts-1", "voice": "nobody", "input": "x"}, "voice"),
        ({"model": "dall-e", "voice": "alloy", "input": "x"}, "model"),
        ({"model": "tts-1", "voice": "alloy", "input": ""}, "input"),
        ({"model": "tts-1", "voice": "alloy", "input": "x" * 100_001}, "input"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "response_format": "ogg"}, "response_format"),
        ({"model": "tts-1", "voice": "alloy", "input": "x" * 5000, "response_format": "opus"}, "response_format"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "speed": 9}, "speed"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "instructions": "softly"}, "instructions"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "stream_format": "mp4"}, "stream_format"),
    ],
)
async def test_every_field_error_names_its_param(client: AppClient, body: dict[str, Any], param: str) -> None:
    """Each 400 about a field of /v1/audio/speech names it in OpenAI's `param`, by OpenAI's name for it."""
    response = await client.post("/v1/audio/speech", json=body, headers={"Authorization": "Bearer sk-test-param"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param, error
    assert error["message"].startswith(param) or param in error["message"], error
