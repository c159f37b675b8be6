"""Every way the upstream can fail: what the user sees, how often we tried, and that no bad audio is kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from speccyd.appkeys import RUNNER
from speccyd.generation.chunking import split_text
from speccyd.storage.blobs import TMP_DIR
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.invariants import check_data_dir

MakeClient = Callable[..., Awaitable[AppClient]]
ATTEMPTS = 3


@dataclass(frozen=True)
class Case:
    fault: Fault
    error: str  # what the user reads in the failed status, as a substring
    attempts: int  # upstream speech calls made before giving up


CASES: dict[str, Case] = {
    "401": Case(Fault(status=401, message="Incorrect API key"), "upstream error 401: Incorrect API key", 1),
    "403": Case(Fault(status=403, message="Project not allowed"), "upstream error 403: Project not allowed", 1),
    "404": Case(Fault(status=404, message="model not found"), "upstream error 404: model not found", 1),
    "400": Case(Fault(status=400, message="bad input"), "upstream error 400: bad input", 1),
    "429 quota": Case(
        Fault(status=429, message="You exceeded your quota", code="insufficient_quota"),
        "upstream error 429: You exceeded your quota",
        1,
    ),
    "429 retry-after": Case(Fault(status=429, retry_after="0", message="slow down"), "upstream error 429", ATTEMPTS),
    "429 no retry-after": Case(Fault(status=429, message="slow down"), "upstream error 429: slow down", ATTEMPTS),
    "429 retry-after date": Case(
        Fault(status=429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"), "upstream error 429", ATTEMPTS
    ),
    "500": Case(Fault(status=500), "upstream error 500: fake upstream failure", ATTEMPTS),
    "502": Case(Fault(status=502), "upstream error 502", ATTEMPTS),
    "503": Case(Fault(status=503, retry_after="0"), "upstream error 503", ATTEMPTS),
    "reset before first byte": Case(Fault("reset"), "upstream connection failed", ATTEMPTS),
    "reset mid-audio": Case(Fault("reset_mid"), "upstream connection failed", ATTEMPTS),
    "body cut short": Case(Fault("cut"), "upstream connection failed", ATTEMPTS),
    "empty 200": Case(Fault("empty"), "upstream returned no audio", ATTEMPTS),
    "wrong content type": Case(Fault("wrong_type"), "upstream sent text/html instead of audio", 1),
    "stall after headers": Case(Fault("stall"), "upstream timed out", ATTEMPTS),
    "stall before headers": Case(Fault("stall_headers"), "upstream timed out", ATTEMPTS),
    "endless audio": Case(Fault("endless", chunk=1 << 20), "upstream sent more than 128 MiB of audio", 1),
    # 4,000 bytes at 100 bytes per 0.1s is 4s; each read is quick, so only the whole-call deadline stops it.
    "very slow bytes": Case(Fault("slow", delay=0.1, chunk=100), "upstream too slow", ATTEMPTS),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_fault_fails_cleanly(name: str, make_client: MakeClient, fake: FakeUpstream, data_dir: Path) -> None:
    """Each upstream fault ends in a failed status with a clear message, bounded attempts, and no audio kept."""
    case = CASES[name]
    client = await make_client(upstream_attempts=ATTEMPTS, upstream_timeout="300ms", upstream_deadline=_deadline(case))
    fake.faults.extend([case.fault] * ATTEMPTS)
    headers = await sign_in(client)
    status, body = await generate(client, headers, text=f"fault {name}")
    assert status == 202
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert failed["error"].startswith(case.error), failed["error"]
    assert "Traceback" not in failed["error"] and "sk-test" not in failed["error"]
    if case.attempts > 1:
        assert failed["error"].endswith(f"(after {ATTEMPTS} attempts)")
    assert len(fake.speech_calls) == case.attempts

    download = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert download.status == 410
    assert (await download.json())["error"]["code"] == "generation_failed"
    signed = await client.get(body["url"])
    assert signed.status == 410
    assert check_data_dir(data_dir) == {}


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.attempts > 1])
async def test_transient_fault_then_success_stores_exact_audio(
    name: str, make_client: MakeClient, fake: FakeUpstream, data_dir: Path
) -> None:
    """After retryable faults the next good answer is stored whole, byte for byte, and nothing else is."""
    client = await make_client(upstream_attempts=ATTEMPTS, upstream_timeout="300ms", upstream_deadline="1s")
    fake.faults.extend([CASES[name].fault] * (ATTEMPTS - 1))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text=f"recover {name}")
    await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == ATTEMPTS
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    expected = FakeUpstream.audio_for(fake.speech_calls[-1].body or {}, fake.audio_size)
    assert await response.read() == expected
    ready = check_data_dir(data_dir)
    assert set(ready) == {body["file_id"]}


@pytest.mark.parametrize("kind", ["stall", "stall_headers", "slow"])
async def test_stalled_call_frees_its_slot_for_the_next_job(
    kind: str, make_client: MakeClient, fake: FakeUpstream, data_dir: Path
) -> None:
    """With one upstream slot, a stalled call times out and the next job then gets the slot and succeeds."""
    client = await make_client(
        upstream_concurrency=1, upstream_attempts=1, upstream_timeout="300ms", upstream_deadline="1s"
    )
    fake.faults.append(Fault(kind, delay=0.1, chunk=100))
    headers = await sign_in(client)
    _, stalled = await generate(client, headers, text="this one stalls")

    await eventually(lambda: len(fake.speech_calls) == 1, what="the stalled call")
    _, queued = await generate(client, headers, text="this one waits for the slot")
    await wait_status(client, headers, stalled["content_hash"], "failed")
    await wait_status(client, headers, queued["content_hash"], "ready")
    assert len(fake.speech_calls) == 2
    assert set(check_data_dir(data_dir)) == {queued["file_id"]}


async def test_sign_in_when_upstream_is_down_is_502_not_401(client: AppClient, fake: FakeUpstream) -> None:
    """If the upstream cannot check a key, sign-in says so (502), without calling the key bad."""
    fake.models_status = 503
    response = await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "upstream_unavailable"


async def test_slow_but_steady_upstream_within_deadline_succeeds(make_client: MakeClient, fake: FakeUpstream) -> None:
    """Slow bytes that arrive within the deadline are a success, not a fault."""
    client = await make_client(upstream_timeout="300ms", upstream_deadline="10s")
    fake.faults.append(Fault("slow", delay=0.01, chunk=500))
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="slow but fine")
    await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == 1


async def test_long_retry_after_waits_without_holding_a_slot(
    make_client: MakeClient, fake: FakeUpstream, data_dir: Path
) -> None:
    """A 429 asking for a 300 s wait parks that job outside the upstream slot: the next job runs meanwhile."""
    client = await make_client(upstream_concurrency=1)
    fake.faults.append(Fault(status=429, retry_after="300"))
    headers = await sign_in(client)
    _, parked = await generate(client, headers, text="told to wait five minutes")

    await eventually(lambda: len(fake.speech_calls) == 1, what="the 429")
    _, other = await generate(client, headers, text="not blocked by it")
    await wait_status(client, headers, other["content_hash"])
    status = await (await client.get(f"/tts/{parked['content_hash']}/status", headers=headers)).json()
    assert status["status"] == "generating"
    assert len(fake.speech_calls) == 2


# --- the same faults in one chunk of a long text, and through the OpenAI-compatible endpoint ---

LIMIT = 200  # upstream_max_chars here: a long text of three chunks stays small and fast
LONG_TEXT = "\n\n".join(" ".join(f"P{p} sentence {s} is about faults." for s in range(5)) for p in range(3))


def _deadline(case: Case) -> str:
    # 128 MiB of endless audio must hit the size cap before the deadline even on a crowded CI machine
    # (within 1 s it read "upstream too slow" once in a full run); "very slow bytes" needs the 1 s deadline.
    return "30s" if case.fault.kind == "endless" else "1s"


@pytest.mark.parametrize("name", list(CASES))
async def test_fault_in_one_chunk_of_a_long_text_fails_the_file_cleanly(
    name: str, make_client: MakeClient, fake: FakeUpstream, data_dir: Path
) -> None:
    """A fault in the middle chunk of three fails the whole file with the chunk named, the same attempts as a
    short text, and no part, temp file or audio left behind."""
    chunks = split_text(LONG_TEXT, LIMIT)
    assert len(chunks) == 3
    case = CASES[name]
    client = await make_client(
        upstream_attempts=ATTEMPTS,
        upstream_timeout="300ms",
        upstream_deadline=_deadline(case),
        upstream_max_chars=LIMIT,
    )
    fake.faults.extend([dataclasses.replace(case.fault, match=chunks[1])] * ATTEMPTS)
    headers = await sign_in(client)
    status, body = await generate(client, headers, text=LONG_TEXT, format="pcm")
    assert status == 202
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert failed["error"].startswith(f"chunk 2 of 3: {case.error}"), failed["error"]
    assert "Traceback" not in failed["error"] and "sk-test" not in failed["error"]
    middle = [c for c in fake.speech_calls if (c.body or {}).get("input") == chunks[1]]
    assert len(middle) == case.attempts
    assert all(len(str((c.body or {})["input"])) <= LIMIT for c in fake.speech_calls)
    assert (await client.get(f"/files/{body['file_id']}", headers=headers)).status == 410
    assert check_data_dir(data_dir) == {}
    assert not any((data_dir / "audio" / TMP_DIR).iterdir())


@dataclass(frozen=True)
class SdkCase:
    name: str  # a key of CASES
    status: int | None  # what the OpenAI SDK's exception carries; None: a 200 stream cut short
    error: type[openai.APIError]


SDK_CASES = [
    SdkCase("400", 400, openai.BadRequestError),
    SdkCase("401", 401, openai.AuthenticationError),
    SdkCase("403", 403, openai.PermissionDeniedError),
    SdkCase("404", 404, openai.NotFoundError),
    SdkCase("429 quota", 429, openai.RateLimitError),
    SdkCase("429 retry-after", 429, openai.RateLimitError),
    SdkCase("500", 502, openai.InternalServerError),
    SdkCase("empty 200", 502, openai.InternalServerError),
    SdkCase("wrong content type", 502, openai.InternalServerError),
    SdkCase("stall after headers", 504, openai.InternalServerError),
    # Audio had started to flow, so speccyd was already streaming a 200 (as OpenAI does): the fault cuts it
    # without its final chunk, and the SDK reports a broken connection, never a short file.
    SdkCase("reset mid-audio", None, openai.APIConnectionError),
    SdkCase("body cut short", None, openai.APIConnectionError),
]


@pytest.mark.parametrize("case", SDK_CASES, ids=[c.name for c in SDK_CASES])
async def test_fault_through_the_openai_endpoint_reaches_the_sdk_as_its_error(
    case: SdkCase, make_client: MakeClient, fake: FakeUpstream, data_dir: Path
) -> None:
    """Through /v1/audio/speech the real openai SDK raises the error class of the upstream's verdict, in
    OpenAI's envelope with the upstream's message (or a cut stream once audio flowed); the attempts and the
    clean data dir are as for /tts."""
    core = CASES[case.name]
    client = await make_client(upstream_attempts=ATTEMPTS, upstream_timeout="300ms", upstream_deadline=_deadline(core))
    fake.faults.extend([core.fault] * ATTEMPTS)
    sdk = openai.AsyncOpenAI(api_key="sk-test-sdk", base_url=str(client.make_url("/v1")), max_retries=0, timeout=30)
    try:
        with pytest.raises(case.error) as caught:
            await sdk.audio.speech.create(model="tts-1", voice="alloy", input=f"sdk fault {case.name}")
    finally:
        await sdk.close()
    if case.status is not None:
        error = caught.value
        assert isinstance(error, openai.APIStatusError) and error.status_code == case.status
        assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
        assert error.body["message"].startswith(f"generation failed: {core.error}"), error.body
        expected_type = {429: "rate_limit_error"}.get(case.status, "invalid_request_error")
        assert error.body["type"] == ("server_error" if case.status >= 500 else expected_type)
        assert "sk-test" not in error.body["message"]

    async def job_over() -> bool:  # a cut stream leaves the job retrying in the background
        return len(fake.speech_calls) == core.attempts and client.server.app[RUNNER].running == 0

    await eventually(job_over, what="the generation to end")
    assert check_data_dir(data_dir) == {}


async def test_sdk_default_retries_do_not_repeat_a_refused_generation(client: AppClient, fake: FakeUpstream) -> None:
    """An SDK with its default retries (2) makes one upstream call for a text the upstream refuses: the 400 is
    passed through, where a 502 made the SDK ask twice more and speccyd generate twice more."""
    fake.faults.append(Fault(status=400, message="this text is not allowed"))
    sdk = openai.AsyncOpenAI(api_key="sk-test-sdk", base_url=str(client.make_url("/v1")), timeout=30)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.audio.speech.create(model="tts-1", voice="alloy", input="refused once")
    finally:
        await sdk.close()
    assert "this text is not allowed" in caught.value.message
    assert len(fake.speech_calls) == 1
