"""GET /files and /files/{id}/meta: every device sees the same library and exactly what changed."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.appkeys import BLOBS, DATABASE
from speccyd.generation.cleanup import expire, purge
from speccyd.storage.records import NewFile, PurgeFilter
from speccyd.storage.sqlite import SqliteDatabase
from tests.clock import FakeClock
from tests.conftest import AppClient, generate, old_database, sign_in, wait_status


async def page(client: AppClient, headers: dict[str, str], since: str = "0", limit: int = 100) -> dict[str, Any]:
    response = await client.get("/files", params={"since": since, "limit": limit}, headers=headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


class Device:
    """A client's copy of the library, kept only from /files pages, as an app would."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.cursor = "0"

    def apply(self, body: dict[str, Any]) -> None:
        for entry in body["files"]:
            self.files[entry["file_id"]] = entry
        for gone in body["deleted"]:
            self.files.pop(gone["file_id"], None)
        self.cursor = body["next_cursor"]

    async def sync(self, client: AppClient, headers: dict[str, str], limit: int = 100) -> int:
        pages = 0
        while True:
            body = await page(client, headers, self.cursor, limit)
            self.apply(body)
            pages += 1
            if not body["has_more"]:
                return pages


async def make_ready(client: AppClient, headers: dict[str, str], text: str) -> str:
    _, body = await generate(client, headers, text=text)
    await wait_status(client, headers, body["content_hash"])
    return str(body["file_id"])


async def test_new_device_syncs_everything_by_following_cursors(client: AppClient) -> None:
    """With limit=2, five files arrive over three pages, with full metadata and signed URLs that work."""
    headers = await sign_in(client)
    ids = [await make_ready(client, headers, f"Text number {i}") for i in range(5)]
    device = Device()
    assert await device.sync(client, headers, limit=2) == 3
    assert set(device.files) == set(ids)
    entry = device.files[ids[0]]
    assert entry["status"] == "ready"
    assert entry["text_preview"] == "Text number 0"
    assert entry["characters"] == len("Text number 0")
    assert (entry["voice"], entry["model"], entry["format"], entry["speed"]) == ("alloy", "tts-1", "mp3", 1.0)
    assert entry["size_bytes"] == 4000
    assert entry["created_at"].endswith("Z") and entry["expires_at"].endswith("Z")
    audio = await client.get(entry["url"])  # no session: the signature is the authorization
    assert audio.status == 200
    assert len(await audio.read()) == 4000


async def test_returning_device_sees_exactly_what_changed(client: AppClient) -> None:
    """After a sync, only the new file and the deleted file's tombstone come back; then nothing."""
    headers = await sign_in(client)
    keep = await make_ready(client, headers, "Keep me")
    doomed = await make_ready(client, headers, "Delete me")
    device = Device()
    await device.sync(client, headers)
    assert (await client.delete(f"/tts/{doomed}", headers=headers)).status == 200
    new = await make_ready(client, headers, "Brand new")
    changes = await page(client, headers, device.cursor)
    assert [f["file_id"] for f in changes["files"]] == [new]
    assert changes["deleted"] == [
        {
            "file_id": doomed,
            "content_hash": changes["deleted"][0]["content_hash"],
            "reason": "deleted",
            "deleted_at": changes["deleted"][0]["deleted_at"],
        }
    ]
    device.apply(changes)
    assert set(device.files) == {keep, new}
    nothing = await page(client, headers, device.cursor)
    assert nothing == {"files": [], "deleted": [], "next_cursor": device.cursor, "has_more": False}


async def test_cache_hit_is_reported_as_a_change(client: AppClient) -> None:
    """A cache hit moves a file's expiry, so other devices receive the file again with the new expiry."""
    headers = await sign_in(client)
    file_id = await make_ready(client, headers, "Popular")
    device = Device()
    await device.sync(client, headers)
    await generate(client, headers, text="Popular")
    changes = await page(client, headers, device.cursor)
    assert [f["file_id"] for f in changes["files"]] == [file_id]


async def test_generating_file_is_listed_then_updated_when_ready(client: AppClient) -> None:
    """A device sees a file while it generates, and sees it again once it is ready."""
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="In progress")
    device = Device()
    await device.sync(client, headers)
    await wait_status(client, headers, body["content_hash"])
    if device.files[body["file_id"]]["status"] == "generating":
        changes = await page(client, headers, device.cursor)
        assert [(f["file_id"], f["status"]) for f in changes["files"]] == [(body["file_id"], "ready")]


async def test_expiry_and_purge_leave_tombstones(
    make_client: Callable[..., Awaitable[AppClient]], clock: FakeClock
) -> None:
    """Cleanup's expiry pass and a purge both record tombstones: 'expired' and 'deleted'."""
    client = await make_client(clock, retention="1h", cleanup_interval="1h")
    headers = await sign_in(client)
    db, blobs = client.server.app[DATABASE], client.server.app[BLOBS]
    old = await make_ready(client, headers, "Short-lived")
    device = Device()
    await device.sync(client, headers)
    clock.advance(3601)
    assert len(await expire(db, blobs, clock.now())) == 1
    changes = await page(client, headers, device.cursor)
    assert [(d["file_id"], d["reason"]) for d in changes["deleted"]] == [(old, "expired")]
    device.apply(changes)

    client2 = await make_client(retention="1h", cleanup_interval="1h")  # same data dir, new server
    headers2 = await sign_in(client2)
    fresh = await make_ready(client2, headers2, "Purged by the admin")
    db2, blobs2 = client2.server.app[DATABASE], client2.server.app[BLOBS]
    await purge(db2, blobs2, PurgeFilter(all=True), time.time())
    changes = await page(client2, headers2, device.cursor)
    assert changes["files"] == []  # created and purged since the cursor: only its tombstone is left
    assert [(d["file_id"], d["reason"]) for d in changes["deleted"]] == [(fresh, "deleted")]


async def test_users_never_see_each_others_files_or_tombstones(client: AppClient) -> None:
    """Bob's library is empty while Alice creates and deletes; Alice's meta is a 404 for Bob."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    kept = await make_ready(client, alice, "Alice one")
    gone = await make_ready(client, alice, "Alice two")
    await client.delete(f"/tts/{gone}", headers=alice)
    assert await page(client, bob) == {"files": [], "deleted": [], "next_cursor": "0", "has_more": False}
    assert (await client.get(f"/files/{kept}/meta", headers=bob)).status == 404


async def test_meta_returns_one_files_metadata(client: AppClient) -> None:
    """GET /files/{id}/meta gives the same metadata as the library lists."""
    headers = await sign_in(client)
    file_id = await make_ready(client, headers, "Meta " + "x" * 300)
    meta = await (await client.get(f"/files/{file_id}/meta", headers=headers)).json()
    listed = (await page(client, headers))["files"][0]
    assert meta["file_id"] == file_id
    assert {k: v for k, v in meta.items() if k != "url"} == {k: v for k, v in listed.items() if k != "url"}
    assert len(meta["text_preview"]) == 200 and meta["text_preview"].endswith("…")
    assert meta["characters"] == 305
    assert (await client.get(f"/files/{'0' * 32}/meta", headers=headers)).status == 404
    assert (await client.get(f"/files/{file_id}/meta")).status == 401


async def test_bad_cursor_and_limit_are_clear_errors(client: AppClient) -> None:
    """since and limit must be whole numbers in range; a cursor from the future is a 410."""
    headers = await sign_in(client)
    for query, code in [
        ({"since": "abc"}, "invalid_cursor"),
        ({"since": "-1"}, "invalid_cursor"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "\uff11"}, "invalid_limit"),  # a full-width digit: isdigit() but not ASCII
    ]:
        response = await client.get("/files", params=query, headers=headers)
        assert response.status == 400, query
        assert (await response.json())["error"]["code"] == code
    ahead = await client.get("/files", params={"since": "999"}, headers=headers)
    assert ahead.status == 410
    assert (await ahead.json())["error"]["code"] == "cursor_expired"


async def test_cursor_older_than_pruned_tombstones_must_resync(client: AppClient) -> None:
    """Once old tombstones are pruned, a cursor from before them gets 410; since=0 still works."""
    headers = await sign_in(client)
    first = await make_ready(client, headers, "One")
    device = Device()
    await device.sync(client, headers)
    await client.delete(f"/tts/{first}", headers=headers)
    await make_ready(client, headers, "Two")
    assert await client.server.app[DATABASE].prune_tombstones(time.time() + 1) == 1
    stale = await client.get("/files", params={"since": "1"}, headers=headers)
    assert stale.status == 410
    fresh = Device()
    await fresh.sync(client, headers)
    assert [f["text_preview"] for f in fresh.files.values()] == ["Two"]


async def test_pages_stay_consistent_under_concurrent_inserts_and_deletes(client: AppClient) -> None:
    """A device paging with limit=3 while files are created and deleted ends with exactly the server's library."""
    headers = await sign_in(client)
    rng = random.Random(6)
    live: list[str] = [await make_ready(client, headers, f"seed {i}") for i in range(8)]
    device = Device()
    counter = 0

    async def mutate() -> None:
        nonlocal counter
        for _ in range(3):
            if live and rng.random() < 0.4:
                victim = live.pop(rng.randrange(len(live)))
                assert (await client.delete(f"/tts/{victim}", headers=headers)).status == 200
            else:
                counter += 1
                _, body = await generate(client, headers, text=f"concurrent {counter}")
                live.append(body["file_id"])

    for _ in range(15):  # bounded: 15 rounds of one page fetched while three changes race it
        body, _ = await asyncio.gather(page(client, headers, device.cursor, limit=3), mutate())
        device.apply(body)
    await device.sync(client, headers, limit=3)
    assert set(device.files) == set(live)
    truth = await page(client, headers, "0", limit=1000)
    assert {f["file_id"]: f["status"] for f in truth["files"]} == {
        fid: entry["status"] for fid, entry in device.files.items()
    }


async def test_upgrade_gives_existing_files_sequence_numbers(tmp_path: Path) -> None:
    """A database from before sync gets every existing file listed, oldest first, after the migration."""
    path = tmp_path / "old.db"
    db = old_database(path, 1)
    db.execute("INSERT INTO users VALUES ('u1', 'h', x'00', 0, 0)")
    for i, created in enumerate([30.0, 10.0, 20.0]):
        db.execute(
            "INSERT INTO audio_files (id, user_id, content_hash, status, model, voice, format, speed, text, "
            "characters, created_at, updated_at, expires_at) "
            "VALUES (?, 'u1', ?, 'ready', 'tts-1', 'alloy', 'mp3', 1.0, ?, 1, ?, ?, 1e12)",
            (f"{i:032x}", f"{i:064x}", f"t{i}", created, created),
        )
    db.close()
    store = SqliteDatabase(path)
    try:
        changes = await store.changes_since("u1", 0, 10)
        assert [row.created_at for _, row in changes.files] == [10.0, 20.0, 30.0]
        # Numbered 1 to 3 by migration 2, then renumbered in the same order by migration 5's re-hash.
        assert [seq for seq, _ in changes.files] == [4, 5, 6]
        assert changes.next_cursor == 6
    finally:
        await store.close()


# Weighted towards creating and finishing files, so libraries grow and changes pile up between syncs.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim"] * 3 + ["ready"] * 3 + ["delete", "purge", "page", "page", "sync"]),
        st.integers(0, 12),
        st.integers(1, 4),
    ),
    max_size=60,
)


class StoreDevice:
    """A device's copy of one user's library, built only from Database.changes_since pages."""

    def __init__(self, store: SqliteDatabase, user_id: str) -> None:
        self.store, self.user_id = store, user_id
        self.files: dict[str, tuple[str, float]] = {}
        self.cursor = self.last_seq = 0

    async def page(self, limit: int) -> bool:
        page = await self.store.changes_since(self.user_id, self.cursor, limit)
        seqs = sorted([s for s, _ in page.files] + [t.seq for t in page.tombstones])
        assert len(seqs) <= limit and all(s > self.last_seq for s in seqs)  # change order, nothing twice
        self.last_seq = seqs[-1] if seqs else self.last_seq
        for _, row in page.files:
            self.files[row.id] = (row.status, row.expires_at)
        for gone in page.tombstones:
            self.files.pop(gone.file_id, None)
        self.cursor = page.next_cursor
        return page.has_more

    async def sync_and_check(self) -> None:
        while await self.page(5):
            pass
        truth = await self.store.select_purge(PurgeFilter(user_id=self.user_id), 0)
        assert self.files == {r.id: (r.status, r.expires_at) for r in truth}


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_any_interleaving_of_changes_and_pages_converges(ops: list[tuple[str, int, int]]) -> None:
    """For any mix of creates, completions, deletes, purges and page reads, every full sync equals the truth."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_interleave(Path(tmp) / "sync.db", ops))


async def _interleave(path: Path, ops: list[tuple[str, int, int]]) -> None:
    store = SqliteDatabase(path)
    try:
        users = [await store.upsert_user(f"hash-{name}", lambda _: b"k", 0.0) for name in ("alice", "bob")]
        device = StoreDevice(store, users[0])
        for op, n, k in ops:
            now = time.time()
            user = users[n % 2]
            if op == "claim":
                new = NewFile(f"{n:064x}", "tts-1", "alloy", "mp3", 1.0, None, f"text {n}")
                await store.claim(user, new, now, 3600)
            elif op == "ready":
                generating = await store.generating()
                if generating:
                    await store.mark_ready(generating[n % len(generating)].id, 10, "0" * 64, now, 3600)
            elif op == "delete":
                rows = await store.select_purge(PurgeFilter(user_id=user), now)
                if rows:
                    await store.delete_file(user, rows[n % len(rows)].id, now)
            elif op == "purge":
                await store.delete_purge(PurgeFilter(user_id=user), now, k)
            elif op == "page":
                await device.page(k)
            else:
                await device.sync_and_check()
        await device.sync_and_check()
    finally:
        await store.close()
