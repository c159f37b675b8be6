"""POST /tts/generate: caching, dedup, background generation, retries and failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from speccyd.config.settings import Settings
from speccyd.config.units import iso
from speccyd.generation.speech import content_hash
from speccyd.storage.sqlite import SqliteDatabase
from tests.clock import FakeClock
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault


async def test_generate_then_download_exact_upstream_bytes(client: AppClient, fake: FakeUpstream) -> None:
    """A new request is generated in the background and the file holds exactly the upstream's audio."""
    headers = await sign_in(client)
    status, body = await generate(client, headers, text="Read me aloud.")
    assert status == 202
    assert body["status"] == "generating"
    ready = await wait_status(client, headers, body["content_hash"])
    assert ready["file_id"] == body["file_id"]
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/mpeg"
    expected = FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)
    assert await response.read() == expected


def _documented_hash(model: str, voice: str, fmt: str, speed: float, instructions: str | None, text: str) -> str:
    """README's encoding, written out again here: the tag, then each field as <byte length>:<bytes>,."""
    import hashlib

    fields = [model, voice, fmt, f"{speed:.2f}", instructions or "", text]
    encoded = b"".join(str(len(f.encode())).encode() + b":" + f.encode() + b"," for f in fields)
    return hashlib.sha256(b"speccyd content hash v2\n" + encoded).hexdigest()


def _readme_vectors() -> list[tuple[tuple[str, str, str, float, str | None, str], str]]:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("<!-- content-hash-vectors -->")[1].split("<!-- /content-hash-vectors -->")[0]
    vectors = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip().strip("`").replace("\\n", "\n") for c in line.strip("|").split("|")]
        model, voice, fmt, speed, instructions, text, digest = cells
        vectors.append(
            ((model, voice, fmt, float(speed), None if instructions == "none" else instructions, text), digest)
        )
    return vectors


def test_content_hash_v2_matches_the_readme_test_vectors() -> None:
    """Every README test vector is what speccyd computes and what README's description computes."""
    vectors = _readme_vectors()
    assert len(vectors) >= 5
    for fields, digest in vectors:
        assert content_hash(*fields) == digest, fields
        assert _documented_hash(*fields) == digest, fields


def test_requests_that_collided_in_v1_have_different_hashes() -> None:
    """v1 joined fields with newlines, so a newline moved between instructions and text collided; v2 does not."""
    import hashlib

    a = ("gpt-4o-mini-tts", "coral", "opus", 0.5, "a\nb", "c")
    b = ("gpt-4o-mini-tts", "coral", "opus", 0.5, "a", "b\nc")
    v1 = ["\n".join([*f[:3], f"{f[3]:.2f}", f[4] or "", f[5]]) for f in (a, b)]
    assert hashlib.sha256(v1[0].encode()).hexdigest() == hashlib.sha256(v1[1].encode()).hexdigest()
    assert content_hash(*a) != content_hash(*b)
    # Digits at a field's edge cannot move into the length either.
    assert content_hash("tts-1", "alloy", "mp3", 1.0, "1", "2:x") != content_hash(
        "tts-1", "alloy", "mp3", 1.0, "12", "x"
    )


async def test_content_hash_matches_documented_formula(client: AppClient) -> None:
    """The content_hash in the response is the documented v2 encoding, computable offline."""
    headers = await sign_in(client)
    _, body = await generate(
        client, headers, text="Hi", voice="nova", model="gpt-4o-mini-tts", format="wav", speed=1.25,
        instructions="cheerful",
    )  # fmt: skip
    assert body["content_hash"] == _documented_hash("gpt-4o-mini-tts", "nova", "wav", 1.25, "cheerful", "Hi")
    assert body["content_hash"] == content_hash("gpt-4o-mini-tts", "nova", "wav", 1.25, "cheerful", "Hi")


async def test_requests_that_collided_in_v1_are_two_files(client: AppClient, fake: FakeUpstream) -> None:
    """The old collision is two generations with their own parameters, never one request's cached audio."""
    headers = await sign_in(client)
    first_status, first = await generate(
        client, headers, text="c", instructions="a\nb", model="gpt-4o-mini-tts", voice="coral"
    )
    await wait_status(client, headers, first["content_hash"])
    second_status, second = await generate(
        client, headers, text="b\nc", instructions="a", model="gpt-4o-mini-tts", voice="coral"
    )
    assert (first_status, second_status) == (202, 202)
    assert first["file_id"] != second["file_id"] and first["content_hash"] != second["content_hash"]
    await wait_status(client, headers, second["content_hash"])
    sent = [(c.body or {}).get("input") for c in fake.speech_calls]
    assert sent == ["c", "b\nc"]


async def test_upstream_receives_the_requested_parameters(client: AppClient, fake: FakeUpstream) -> None:
    """Voice, model, format, speed and instructions reach the upstream unchanged."""
    headers = await sign_in(client)
    _, body = await generate(
        client, headers, text="Params", voice="coral", model="gpt-4o-mini-tts", format="flac", speed=0.5,
        instructions="slowly",
    )  # fmt: skip
    await wait_status(client, headers, body["content_hash"])
    sent = fake.speech_calls[0].body
    assert sent == {
        "input": "Params", "model": "gpt-4o-mini-tts", "voice": "coral", "response_format": "flac",
        "speed": 0.5, "instructions": "slowly",
    }  # fmt: skip
    assert fake.speech_calls[0].api_key == "sk-test-alice"


async def test_cache_hit_makes_no_upstream_call_and_extends_expiry(
    make_client: Any, fake: FakeUpstream, clock: FakeClock
) -> None:
    """A ready file is returned with 200, no new upstream call, and a later expiry."""
    client = await make_client(clock)
    headers = await sign_in(client)
    _, first = await generate(client, headers)
    await wait_status(client, headers, first["content_hash"])
    clock.advance(60)  # expiry has one-second resolution: a minute later it must be a minute later
    status, again = await generate(client, headers)
    assert status == 200
    assert again["status"] == "ready"
    assert again["file_id"] == first["file_id"]
    assert again["expires_at"] > first["expires_at"]
    assert len(fake.speech_calls) == 1


async def test_64_concurrent_identical_requests_make_one_upstream_call(client: AppClient, fake: FakeUpstream) -> None:
    """Concurrent identical requests share one generation: one upstream call, one file id."""
    headers = await sign_in(client)
    fake.gate.clear()
    results = await asyncio.gather(*(generate(client, headers, text="Same text") for _ in range(64)))
    assert {status for status, _ in results} == {202}
    assert len({body["file_id"] for _, body in results}) == 1
    fake.gate.set()
    await wait_status(client, headers, results[0][1]["content_hash"])
    assert len(fake.speech_calls) == 1


async def test_same_key_on_two_devices_shares_the_cache(client: AppClient, fake: FakeUpstream) -> None:
    """A second device signing in with the same key gets the first device's audio without a new call."""
    phone = await sign_in(client)
    _, body = await generate(client, phone)
    await wait_status(client, phone, body["content_hash"])
    laptop = await sign_in(client)
    status, again = await generate(client, laptop)
    assert (status, again["file_id"]) == (200, body["file_id"])
    assert len(fake.speech_calls) == 1


async def test_different_users_do_not_share_audio(client: AppClient, fake: FakeUpstream) -> None:
    """Each user's generation is billed to their own key, even for the same text."""
    alice = await sign_in(client, "sk-test-alice")
    bob = await sign_in(client, "sk-test-bob")
    _, a = await generate(client, alice)
    _, b = await generate(client, bob)
    assert a["file_id"] != b["file_id"]
    await wait_status(client, alice, a["content_hash"])
    await wait_status(client, bob, b["content_hash"])
    assert sorted(c.api_key or "" for c in fake.speech_calls) == ["sk-test-alice", "sk-test-bob"]


async def test_retries_5xx_and_429_then_succeeds(client: AppClient, fake: FakeUpstream) -> None:
    """500, 503 and 429 with Retry-After are retried; the fourth attempt's audio is stored."""
    fake.faults.extend([Fault(status=500), Fault(status=503), Fault(status=429, retry_after="0")])
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == 4


async def test_connection_errors_are_retried(client: AppClient, fake: FakeUpstream) -> None:
    """A reset before the first byte and one mid-audio are retried; only complete audio is stored."""
    fake.faults.extend([Fault("reset"), Fault("reset_mid")])
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    await wait_status(client, headers, body["content_hash"])
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert len(await response.read()) == fake.audio_size
    assert len(fake.speech_calls) == 3


async def test_client_errors_fail_at_once_with_upstream_message(client: AppClient, fake: FakeUpstream) -> None:
    """A 400 from the upstream is not retried; its message is kept in `error`."""
    fake.faults.append(Fault(status=400, message="Input contains unsupported characters"))
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert "Input contains unsupported characters" in failed["error"]
    assert len(fake.speech_calls) == 1


async def test_retries_are_bounded(make_client: object, fake: FakeUpstream) -> None:
    """After `upstream_attempts` failures the file fails, and nothing is stored."""
    client = await make_client(upstream_attempts=3)  # type: ignore[operator]
    fake.faults.extend([Fault(status=502)] * 5)
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert "502" in failed["error"]
    assert len(fake.speech_calls) == 3
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert response.status == 410


async def test_empty_and_truncated_audio_is_never_stored(
    client: AppClient, fake: FakeUpstream, settings: object
) -> None:
    """An empty 200 and a body cut short are treated as failures and retried, never kept."""
    fake.faults.extend([Fault("empty"), Fault("cut")])
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    await wait_status(client, headers, body["content_hash"])
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert len(await response.read()) == fake.audio_size
    assert len(fake.speech_calls) == 3


async def test_failed_generation_is_retried_on_next_request(client: AppClient, fake: FakeUpstream) -> None:
    """After a failure the same request starts a new generation with a new file id."""
    fake.faults.append(Fault(status=400))
    headers = await sign_in(client)
    _, first = await generate(client, headers)
    await wait_status(client, headers, first["content_hash"], "failed")
    status, second = await generate(client, headers)
    assert status == 202
    assert second["file_id"] != first["file_id"]
    await wait_status(client, headers, second["content_hash"])


async def test_revoked_key_fails_generation_with_401_message(client: AppClient, fake: FakeUpstream) -> None:
    """A key revoked after sign-in makes generation fail without retries."""
    headers = await sign_in(client, "sk-test-revoked-later")
    fake.revoked.add("sk-test-revoked-later")
    _, body = await generate(client, headers)
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert "401" in failed["error"]
    assert len(fake.speech_calls) == 1


async def test_status_is_404_for_unknown_hash(client: AppClient) -> None:
    """Status of content this user never asked for is 404."""
    headers = await sign_in(client)
    response = await client.get(f"/tts/{'0' * 64}/status", headers=headers)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_upstream_concurrency_is_bounded(make_client: object, fake: FakeUpstream) -> None:
    """No more than `upstream_concurrency` speech calls are in flight at once."""
    client = await make_client(upstream_concurrency=2)  # type: ignore[operator]
    headers = await sign_in(client)
    fake.gate.clear()
    bodies = [(await generate(client, headers, text=f"text {i}"))[1] for i in range(6)]

    await eventually(lambda: len(fake.speech_calls) == 2, what="two calls in flight")
    assert len(fake.speech_calls) == 2
    fake.gate.set()
    for body in bodies:
        await wait_status(client, headers, body["content_hash"])
    assert len(fake.speech_calls) == 6


async def test_cache_hits_are_recorded_in_the_database(make_client: Any, settings: Settings, clock: FakeClock) -> None:
    """Hits answered from memory reach the database within seconds: the new expiry and a usage record."""
    client = await make_client(clock)
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    await wait_status(client, headers, body["content_hash"])
    clock.advance(60)  # so the bumped expiry differs at one-second resolution
    status, hit = await generate(client, headers)
    assert status == 200
    db = SqliteDatabase(settings.db_path)
    try:

        async def recorded() -> bool:
            row = await db.get_file(body["file_id"])
            (line,) = [line for line in await db.usage_lines(0) if line.kind == "cache_hit"] or [None]
            return (
                row is not None and iso(row.expires_at) == hit["expires_at"] and line is not None and line.events == 1
            )

        await eventually(recorded, what="the cache hit to be written")
    finally:
        await db.close()


async def test_a_ready_file_unknown_to_memory_is_a_cache_hit_from_the_database(
    make_client: Any, fake: FakeUpstream, settings: Settings, clock: FakeClock
) -> None:
    """After a restart the in-memory cache is empty: the claim finds the ready row, extends its expiry,
    records the hit and calls no upstream."""
    first = await make_client(clock)
    headers = await sign_in(first)
    _, made = await generate(first, headers)
    await wait_status(first, headers, made["content_hash"])
    await first.close()
    clock.advance(3600)
    second = await make_client(clock)  # same data dir, a new process's empty memory
    status, hit = await generate(second, headers)
    assert status == 200 and hit["file_id"] == made["file_id"]
    assert hit["expires_at"] == iso(clock.now() + settings.retention)
    assert len(fake.speech_calls) == 1
    usage = await (await second.get("/user/usage", headers=headers)).json()
    assert usage["cache_hits_30d"] == 1
