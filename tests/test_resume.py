"""Resume on another device: PUT /files/{id}/position, seen by every device's next library sync."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from speccyd.storage.sqlite import SqliteDatabase
from tests.conftest import AppClient, old_database, sign_in, wait_status
from tests.fake_upstream import FakeUpstream
from tests.playback_helpers import clips
from tests.test_library import Device
from tests.test_playback import LIMIT, document

MakeClient = Callable[..., Awaitable[AppClient]]


async def ready_file(client: AppClient, headers: dict[str, str], fake: FakeUpstream) -> dict[str, Any]:
    fake.clips = clips()
    response = await client.post("/tts/generate", json={"text": document(4)}, headers=headers)
    body: dict[str, Any] = await response.json()
    return await wait_status(client, headers, body["content_hash"])


async def test_a_position_written_on_one_device_reaches_the_other_by_sync(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Two sessions of one user: the iPhone stores a position; the Mac's next /files?since= returns the file
    with it, and its meta too; the stored value and its server time come back from the PUT."""
    client = await make_client(upstream_max_chars=LIMIT)
    iphone, mac = await sign_in(client), await sign_in(client)
    file = await ready_file(client, iphone, fake)
    device = Device()
    await device.sync(client, mac)
    assert device.files[file["file_id"]]["position"] is None
    response = await client.put(
        f"/files/{file['file_id']}/position", json={"position_s": 5.5, "device": "iPhone"}, headers=iphone
    )
    assert response.status == 200
    stored = await response.json()
    assert (stored["file_id"], stored["position_s"], stored["device"]) == (file["file_id"], 5.5, "iPhone")
    assert stored["updated_at"].endswith("Z")
    before = device.cursor
    await device.sync(client, mac)
    assert device.cursor != before
    assert device.files[file["file_id"]]["position"] == {
        "position_s": 5.5,
        "device": "iPhone",
        "updated_at": stored["updated_at"],
    }
    meta = await (await client.get(f"/files/{file['file_id']}/meta", headers=mac)).json()
    assert meta["position"]["position_s"] == 5.5 and meta["title"] == "The speccyd playback spec"


async def test_the_last_write_wins_and_a_position_past_the_end_is_clamped(
    make_client: MakeClient, fake: FakeUpstream
) -> None:
    """Writes from two devices: the later one (by server time) is what everyone sees; past the duration it is
    stored as the duration; a device name is optional."""
    client = await make_client(upstream_max_chars=LIMIT)
    iphone, mac = await sign_in(client), await sign_in(client)
    file = await ready_file(client, iphone, fake)
    path = f"/files/{file['file_id']}/position"
    await client.put(path, json={"position_s": 3, "device": "iPhone"}, headers=iphone)
    last = await (await client.put(path, json={"position_s": 1e9}, headers=mac)).json()
    assert last["position_s"] == pytest.approx(file["duration_s"], abs=1e-3) and last["device"] is None
    meta = await (await client.get(f"/files/{file['file_id']}/meta", headers=iphone)).json()
    assert meta["position"]["position_s"] == last["position_s"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"position_s": -1}, "invalid_position"),
        ({"position_s": "12"}, "invalid_position"),
        ({"position_s": True}, "invalid_position"),
        ({"position_s": None}, "invalid_position"),
        ({}, "invalid_position"),
        ({"position_s": 10**400}, "invalid_position"),
        ({"position_s": 1, "device": 7}, "invalid_device"),
        ({"position_s": 1, "device": "x" * 101}, "invalid_device"),
        ({"position_s": 1, "device": "tab\there"}, "invalid_device"),
    ],
)
async def test_a_bad_position_is_a_400_naming_the_rule(
    make_client: MakeClient, fake: FakeUpstream, body: dict[str, Any], code: str
) -> None:
    """A negative, non-number or missing position, or a device that is not a short printable string: 400."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    file = await ready_file(client, headers, fake)
    response = await client.put(f"/files/{file['file_id']}/position", json=body, headers=headers)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == code


async def test_nan_and_other_users_and_no_session_are_refused(make_client: MakeClient, fake: FakeUpstream) -> None:
    """NaN (Python's JSON reads it) is 400; another user's file and an unknown id are 404; no session is 401
    (a signed URL reads, it never writes)."""
    client = await make_client(upstream_max_chars=LIMIT)
    headers = await sign_in(client)
    file = await ready_file(client, headers, fake)
    path = f"/files/{file['file_id']}/position"
    nan = await client.put(path, data=b'{"position_s": NaN}', headers={**headers, "Content-Type": "application/json"})
    assert nan.status == 400
    other = await sign_in(client, "sk-test-bob")
    assert (await client.put(path, json={"position_s": 1}, headers=other)).status == 404
    assert (await client.put(f"/files/{'0' * 32}/position", json={"position_s": 1}, headers=headers)).status == 404
    signed = file["url"].split("?", 1)[1]
    assert (await client.put(f"{path}?{signed}", json={"position_s": 1})).status == 401


async def test_a_database_from_before_positions_is_migrated_in_place(tmp_path: Path) -> None:
    """A version-6 database (the last before playback) gains durations, positions and timelines; its files read
    back with none yet."""
    path = tmp_path / "old.db"
    db = old_database(path, 6)
    db.execute("INSERT INTO users (id, key_hash, key_enc, created_at, last_seen) VALUES ('u', 'h', x'00', 0, 0)")
    db.execute(
        "INSERT INTO audio_files (id, user_id, content_hash, status, model, voice, format, speed, text, characters,"
        " size_bytes, sha256, created_at, updated_at, expires_at) VALUES "
        "(?, 'u', 'c', 'ready', 'tts-1', 'alloy', 'mp3', 1.0, 'Hi', 2, 10, 's', 0, 0, 9e9)",
        ("a" * 32,),
    )
    db.close()
    migrated = SqliteDatabase(path)
    try:
        row = await migrated.get_file("a" * 32)
        assert row is not None and (row.duration_s, row.position_s, row.position_device) == (None, None, None)
        assert await migrated.get_timeline("a" * 32) is None
        moved = await migrated.set_position("u", "a" * 32, 5.0, "Mac", 100.0)
        assert moved is not None and (moved.position_s, moved.position_at) == (5.0, 100.0)
    finally:
        await migrated.close()
