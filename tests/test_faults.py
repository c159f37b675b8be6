"""Every way the upstream can fail: what the user sees, how often we tried, and that no bad audio is kept."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    client = await make_client(upstream_attempts=ATTEMPTS, upstream_timeout="300ms", upstream_deadline="1s")
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

    async def first_in_flight() -> bool:
        return len(fake.speech_calls) == 1

    await eventually(first_in_flight, what="the stalled call")
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

    async def first_refused() -> bool:
        return len(fake.speech_calls) == 1

    await eventually(first_refused, what="the 429")
    _, other = await generate(client, headers, text="not blocked by it")
    await wait_status(client, headers, other["content_hash"])
    status = await (await client.get(f"/tts/{parked['content_hash']}/status", headers=headers)).json()
    assert status["status"] == "generating"
    assert len(fake.speech_calls) == 2
