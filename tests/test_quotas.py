"""Per-user limits on new generations, cost estimates and GET /user/usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from speccyd.config.units import format_size
from speccyd.generation.quotas import next_utc_midnight
from speccyd.media.formats import estimated_audio_bytes
from speccyd.storage.records import LimitOverrides
from speccyd.storage.sqlite import SqliteDatabase
from speccyd.storage.sqlite.maintenance import schema_version
from speccyd.storage.sqlite.migrations import SCHEMA_VERSION
from tests.conftest import AppClient, eventually, generate, old_database, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault

MakeClient = Callable[..., Awaitable[AppClient]]


async def ready(client: AppClient, headers: dict[str, str], text: str, **body: object) -> dict[str, object]:
    _, first = await generate(client, headers, text=text, **body)
    return await wait_status(client, headers, str(first["content_hash"]))


async def test_daily_quota_refuses_new_generation_with_429_and_reset_time(make_client: MakeClient) -> None:
    """Past the daily character quota a new generation gets 429 quota_exceeded naming the limit and its reset."""
    client = await make_client(daily_char_quota="25")
    headers = await sign_in(client)
    await ready(client, headers, "x" * 20)
    status, body = await generate(client, headers, text="y" * 10)
    assert status == 429
    assert body["error"]["code"] == "quota_exceeded"
    message = body["error"]["message"]
    assert "daily character quota" in message and "20 of 25" in message
    reset = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(next_utc_midnight(time.time())))
    assert reset in message
    response = await client.post("/tts/generate", json={"text": "y" * 10}, headers=headers)
    assert 0 < int(response.headers["Retry-After"]) <= 86400


async def test_cache_hits_pass_when_over_quota(make_client: MakeClient, fake: FakeUpstream) -> None:
    """A cache hit costs nothing upstream and stores nothing new, so quotas never refuse it."""
    client = await make_client(daily_char_quota="20", max_files="1", storage_quota="30KB")
    headers = await sign_in(client)
    await ready(client, headers, "a" * 20)
    status, body = await generate(client, headers, text="b")
    assert status in (429, 507)
    status, body = await generate(client, headers, text="a" * 20)
    assert status == 200 and body["status"] == "ready"
    assert len(fake.speech_calls) == 1


async def test_joining_a_generation_in_flight_is_not_a_new_generation(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """A second identical request while the first is generating joins it, even at the file limit."""
    client = await make_client(max_files="1")
    headers = await sign_in(client)
    fake.gate.clear()
    status, first = await generate(client, headers, text="in flight")
    assert status == 202
    status, second = await generate(client, headers, text="in flight")
    assert status == 202 and second["file_id"] == first["file_id"]
    status, other = await generate(client, headers, text="another")
    assert status == 507 and other["error"]["code"] == "quota_exceeded"
    fake.gate.set()


async def test_in_flight_characters_count_against_the_daily_quota(make_client: MakeClient, fake: FakeUpstream) -> None:
    """Characters of generations still running count, so a burst cannot slip past the daily limit."""
    client = await make_client(daily_char_quota="30")
    headers = await sign_in(client)
    fake.gate.clear()
    assert (await generate(client, headers, text="c" * 20))[0] == 202
    status, body = await generate(client, headers, text="d" * 20)
    assert status == 429 and "20 of 30" in body["error"]["message"]
    fake.gate.set()


async def test_storage_quota_gives_507_naming_the_limit(make_client: MakeClient, fake: FakeUpstream) -> None:
    """A generation whose expected audio would take a user past storage_quota gets 507 naming what is stored,
    what it needs and the next expiry time."""
    fake.audio_size = 3000
    needed = estimated_audio_bytes("mp3", 1.0, len("three"))
    client = await make_client(storage_quota=f"{6000 + needed - 1}B")
    headers = await sign_in(client)
    await ready(client, headers, "one")
    await ready(client, headers, "two")
    status, body = await generate(client, headers, text="three")
    assert status == 507
    assert body["error"]["code"] == "quota_exceeded"
    message = body["error"]["message"]
    assert "storage quota reached: 6 KB stored of" in message and f"needs about {format_size(needed)}" in message
    assert "expire" in message


async def test_max_files_gives_507_and_deleting_makes_room(make_client: MakeClient) -> None:
    """At max_files a new generation gets 507; deleting a file lets the next one through."""
    client = await make_client(max_files="2")
    headers = await sign_in(client)
    first = await ready(client, headers, "one")
    await ready(client, headers, "two")
    status, body = await generate(client, headers, text="three")
    assert status == 507 and "file limit reached: 2 of 2 files kept" in body["error"]["message"]
    await client.delete(f"/tts/{first['file_id']}", headers=headers)
    assert (await generate(client, headers, text="three"))[0] == 202


async def test_per_user_override_beats_the_server_default(make_client: MakeClient, settings_db: Any) -> None:
    """A limit stored for one user (speccyd users limit) applies to them only; 0 lifts a server-wide limit."""
    client = await make_client(max_files="1")
    alice = await sign_in(client, "sk-test-alice")
    bob = await sign_in(client, "sk-test-bob")
    await ready(client, alice, "alice one")
    await ready(client, bob, "bob one")
    alice_id = (await settings_db.user_infos())[0].user_id  # users are listed in sign-up order
    await settings_db.set_limits(alice_id, {"max_files": 0})
    assert (await generate(client, alice, text="alice two"))[0] == 202
    assert (await generate(client, bob, text="bob two"))[0] == 507


async def test_user_usage_reports_30_days_cost_savings_and_limits(make_client: MakeClient) -> None:
    """/user/usage adds characters, cache hits, estimated cost and savings over 30 days, and the limits."""
    client = await make_client(daily_char_quota="100000", storage_quota="500MB", price_tts_1_hd="30")
    headers = await sign_in(client)
    await ready(client, headers, "h" * 1000, model="tts-1-hd")
    await ready(client, headers, "s" * 500)
    assert (await generate(client, headers, text="h" * 1000, model="tts-1-hd"))[0] == 200  # a cache hit
    body = await (await client.get("/user/usage", headers=headers)).json()
    assert body["characters_today"] == 1500
    assert body["characters_30d"] == 1500
    assert body["cache_hits_30d"] == 1
    assert body["estimated_cost_30d_usd"] == pytest.approx(1000 * 30 / 1e6 + 500 * 15 / 1e6)
    assert body["saved_cost_30d_usd"] == pytest.approx(1000 * 30 / 1e6)
    assert body["limits"]["daily_char_quota"] == 100000
    assert body["limits"]["storage_quota_bytes"] == 500_000_000
    assert body["limits"]["max_files"] is None
    assert body["limits"]["daily_resets_at"].endswith("T00:00:00Z")


async def test_user_usage_limits_are_null_when_off(client: AppClient) -> None:
    """With no limits configured every limit reads null (none)."""
    headers = await sign_in(client)
    body = await (await client.get("/user/usage", headers=headers)).json()
    assert body["limits"]["daily_char_quota"] is None
    assert body["limits"]["storage_quota_bytes"] is None
    assert body["estimated_cost_30d_usd"] == 0


async def test_a_database_from_before_quotas_upgrades_in_place(tmp_path: Path) -> None:
    """A schema-1 database gains tokens, revocation and limit columns; its users and usage are kept."""

    path = tmp_path / "old.db"
    db = old_database(path, 1)
    db.execute("INSERT INTO users VALUES ('u1', 'h', x'00', 1.0, 2.0)")
    db.execute(
        "INSERT INTO usage_log (user_id, at, kind, model, characters) VALUES ('u1', 3.0, 'generated', 'tts-1', 7)"
    )
    db.close()
    db = SqliteDatabase(path)
    try:
        assert schema_version(db.connection) == SCHEMA_VERSION >= 2
        (info,) = await db.user_infos()
        assert info.sessions_valid_after == 0 and info.overrides == LimitOverrides()
        (line,) = await db.usage_lines(0)
        assert (line.characters, line.tokens) == (7, None)
    finally:
        await db.close()


# --- generations in flight and failed ones count (issue 11) ---


async def _burst(client: AppClient, headers: dict[str, str], texts: list[str]) -> list[int]:
    answers = await asyncio.gather(*(client.post("/tts/generate", json={"text": t}, headers=headers) for t in texts))
    return sorted(a.status for a in answers)


async def test_concurrent_requests_cannot_slip_under_the_storage_quota(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Eight concurrent new generations under a storage quota that fits one: one starts, seven get 507."""
    texts = [f"{n} " + "w" * 300 for n in range(8)]
    one = estimated_audio_bytes("mp3", 1.0, len(texts[0]))
    client = await make_client(storage_quota=f"{one * 3 // 2}B")
    headers = await sign_in(client)
    fake.gate.clear()  # all of them in flight at once
    assert await _burst(client, headers, texts) == [202] + [507] * 7
    fake.gate.set()


async def test_concurrent_requests_cannot_slip_under_max_files(make_client: MakeClient, fake: FakeUpstream) -> None:
    """Eight concurrent new generations with max_files = 1: one starts, seven get 507."""
    client = await make_client(max_files="1")
    headers = await sign_in(client)
    fake.gate.clear()
    assert await _burst(client, headers, [f"file {n}" for n in range(8)]) == [202] + [507] * 7
    fake.gate.set()


async def test_the_reservation_becomes_the_real_size_once_stored(
    make_client: MakeClient, fake: FakeUpstream, settings_db: Any
) -> None:
    """While generating a file holds its estimated size; once stored, its real size, and the estimate is gone."""
    fake.audio_size = 1000
    text = "r" * 300
    one = estimated_audio_bytes("mp3", 1.0, len(text))
    client = await make_client(storage_quota=f"{one + 1500}B")
    headers = await sign_in(client)
    fake.gate.clear()
    assert (await generate(client, headers, text=text))[0] == 202
    assert (await generate(client, headers, text="x" * 30))[0] == 507  # the first holds its estimate
    fake.gate.set()
    await ready(client, headers, text)
    row = settings_db.connection.execute("SELECT size_bytes, reserved_bytes FROM audio_files").fetchone()
    assert tuple(row) == (1000, None)
    assert (await generate(client, headers, text="x" * 30))[0] == 202  # 1000 real bytes leave room


async def test_failed_generations_keep_no_text_and_count_against_max_files(
    make_client: MakeClient, fake: FakeUpstream, settings_db: Any
) -> None:
    """A failed generation keeps only a preview of its text, and counts as a kept file until it expires or
    is deleted."""
    client = await make_client(max_files="2")
    headers = await sign_in(client)
    for n in range(2):
        fake.faults.append(Fault(status=429, code="insufficient_quota", message="You exceeded your quota"))
        _, body = await generate(client, headers, text=f"{n} " + "long text " * 400)
        await wait_status(client, headers, body["content_hash"], "failed")
    lengths = [r[0] for r in settings_db.connection.execute("SELECT length(text) FROM audio_files")]
    assert lengths == [200, 200]
    status, body = await generate(client, headers, text="a third")
    assert status == 507 and "2 of 2 files kept" in body["error"]["message"]


async def test_failed_generations_count_against_the_daily_quota(make_client: MakeClient, fake: FakeUpstream) -> None:
    """Characters of a failed generation were sent upstream: they count against daily_char_quota."""
    client = await make_client(daily_char_quota="100")
    headers = await sign_in(client)
    fake.faults.append(Fault(status=400, message="refused"))
    _, body = await generate(client, headers, text="f" * 60)
    await wait_status(client, headers, body["content_hash"], "failed")
    status, body = await generate(client, headers, text="g" * 60)
    assert status == 429 and "60 of 100" in body["error"]["message"]
    usage = await (await client.get("/user/usage", headers=headers)).json()
    assert usage["characters_today"] == 60 and usage["generated_today"] == 0


async def test_characters_sent_upstream_count_even_if_deleted_mid_generation(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Deleting a file while it is generated does not give its characters back to the daily quota."""
    client = await make_client(daily_char_quota="100")
    headers = await sign_in(client)
    fake.gate.clear()
    _, body = await generate(client, headers, text="h" * 60)
    await eventually(lambda: fake.speech_calls, what="the upstream call")
    assert (await client.delete(f"/tts/{body['file_id']}", headers=headers)).status == 200
    fake.gate.set()
    status, body = await generate(client, headers, text="i" * 60)
    assert status == 429 and "60 of 100" in body["error"]["message"]


async def test_a_user_keeps_a_bounded_number_of_failed_rows(
    make_client: MakeClient, fake: FakeUpstream, settings_db: Any
) -> None:
    """An account whose every request fails cannot grow the database: the oldest failures go past the cap."""
    from speccyd.storage.sqlite.files import MAX_FAILED_KEPT

    client = await make_client()
    headers = await sign_in(client)
    fake.refuse_all = Fault(status=429, code="insufficient_quota", message="You exceeded your quota")
    last = None
    for n in range(MAX_FAILED_KEPT + 5):
        _, last = await generate(client, headers, text=f"no credit {n}")
    assert last is not None
    await wait_status(client, headers, last["content_hash"], "failed")

    def failed() -> int:
        return int(settings_db.connection.execute("SELECT count(*) FROM audio_files").fetchone()[0])

    await eventually(lambda: failed() == MAX_FAILED_KEPT, what=f"{MAX_FAILED_KEPT} failed rows kept")
