"""Running it: /healthz checks, corrupt-database recovery, Prometheus metrics and JSON logs."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from speccyd.server import JsonFormatter
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status

MakeClient = Callable[..., Awaitable[AppClient]]


async def test_healthz_reports_every_check(client: AppClient) -> None:
    """A healthy server answers 200 with the database, disk and cleanup checks all ok."""
    response = await client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "disk": True,
        "cleanup": True,
    }


async def test_healthz_fails_on_low_disk(make_client: MakeClient) -> None:
    """Free disk below min_free_disk gives 503 naming the disk check and the threshold."""
    client = await make_client(min_free_disk="1000000TB")
    response = await client.get("/healthz")
    assert response.status == 503
    body = await response.json()
    assert body["failing"] == ["disk"]
    assert body["error"]["code"] == "unhealthy"
    assert "below min_free_disk" in body["error"]["message"]


async def test_healthz_fails_when_cleanup_is_overdue(make_client: MakeClient, settings_db: Any) -> None:
    """A last cleanup older than 2 x cleanup_interval gives 503 naming the cleanup check."""
    client = await make_client(cleanup_interval="1h")
    assert (await client.get("/healthz")).status == 200
    # The start-up pass first (it would write over the old time set below), then a cleanup long ago.
    await eventually(lambda: settings_db.get_meta("last_cleanup"), what="the start-up cleanup pass")
    await settings_db.set_meta("last_cleanup", repr(time.time() - 3 * 3600))
    response = await client.get("/healthz")
    assert response.status == 503
    body = await response.json()
    assert body["failing"] == ["cleanup"]
    assert "cleanup: last ran 3h ago" in body["error"]["message"]


async def test_healthz_fails_when_the_database_takes_no_writes(client: AppClient, data_dir: Path) -> None:
    """While another process holds the write lock, /healthz answers 503 naming the database, within seconds."""
    other = sqlite3.connect(data_dir / "speccyd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        response = await client.get("/healthz")
        assert response.status == 503
        assert time.monotonic() - started < 5  # the probe's own deadline, not the 5 s busy_timeout
        body = await response.json()
        assert "database" in body["failing"]
        assert body["error"]["message"].startswith("database: a write did not finish")
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (await client.get("/healthz")).status == 200


def _corrupt_pages(path: Path) -> None:
    """Overwrite everything after the first page with garbage: the schema survives, the tables do not."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(bytes((n * 37 + 11) % 256 for n in range(size - 4096)))


def _corrupt_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"this is not an sqlite file at all")


@pytest.mark.parametrize("corrupt", [_corrupt_pages, _corrupt_header], ids=["pages", "header"])
async def test_corrupt_database_is_moved_aside_and_server_starts_fresh(
    make_client: MakeClient, data_dir: Path, caplog: pytest.LogCaptureFixture, corrupt: Callable[[Path], None]
) -> None:
    """A database failing quick_check is renamed with a timestamp, logged, and a fresh one serves."""
    client = await make_client()
    headers = await sign_in(client)
    for n in range(30):  # enough rows for several pages
        _, body = await generate(client, headers, text=f"row {n} " * 50)
    await wait_status(client, headers, body["content_hash"])
    await client.close()
    db = data_dir / "speccyd.db"
    with sqlite3.connect(db) as conn:  # fold the WAL into the file so the damage is really in it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    corrupt(db)

    caplog.set_level(logging.ERROR, logger="speccyd")
    fresh = await make_client()
    assert "DATABASE CORRUPT" in caplog.text and "quick_check" in caplog.text
    moved = list(data_dir.glob("speccyd.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].stat().st_size > 0
    assert list(data_dir.glob("audio.corrupt-*"))
    assert (await fresh.get("/healthz")).status == 200
    old = await fresh.get("/user/usage", headers=headers)
    assert old.status == 401  # the user it names is gone with the old database
    again = await sign_in(fresh)
    assert (await generate(fresh, again, text="a new start"))[0] == 202


async def metric_values(response: aiohttp.ClientResponse) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_are_off_by_default(client: AppClient) -> None:
    """Without `metrics = on`, /metrics does not exist on the main port."""
    assert (await client.get("/metrics")).status == 404


async def test_metrics_count_requests_generations_and_storage(make_client: MakeClient) -> None:
    """With metrics on: requests by route and status, generations by outcome, latency, storage, hit ratio."""
    client = await make_client(metrics="on")
    other = await make_client(metrics="on")  # a second app in the same process has its own registry
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="measured")
    await wait_status(client, headers, body["content_hash"])
    assert (await generate(client, headers, text="measured"))[0] == 200
    assert (await client.get(f"/files/{body['file_id']}", headers=headers)).status == 200
    values = await metric_values(await client.get("/metrics"))
    route = (("method", "POST"), ("route", "/tts/generate"), ("status", "202"))
    assert values[("speccyd_http_requests_total", route)] == 1
    files = (("method", "GET"), ("route", "/files/{file_id}"), ("status", "200"))
    assert values[("speccyd_http_requests_total", files)] == 1
    assert values[("speccyd_generations_total", (("outcome", "generated"),))] == 1
    assert values[("speccyd_generations_total", (("outcome", "cache_hit"),))] == 1
    assert values[("speccyd_upstream_first_byte_seconds_count", ())] == 1
    assert values[("speccyd_upstream_duration_seconds_count", (("result", "ok"),))] == 1
    assert values[("speccyd_stored_files", ())] == 1
    assert values[("speccyd_stored_bytes", ())] == 4000
    assert values[("speccyd_cache_hit_ratio", ())] == 0.5
    assert values[("speccyd_active_streams", ())] == 0
    other_values = await metric_values(await other.get("/metrics"))
    assert ("speccyd_http_requests_total", route) not in other_values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_listen_serves_metrics_on_a_separate_address(make_client: MakeClient) -> None:
    """`metrics_listen` serves /metrics on its own address and not on the main port."""
    port = free_port()
    client = await make_client(metrics_listen=f"127.0.0.1:{port}")
    assert (await client.get("/metrics")).status == 404
    await client.get("/healthz")
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        values = await metric_values(response)
    healthz = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert values[("speccyd_http_requests_total", healthz)] == 1


def test_json_log_lines_are_objects_without_secrets() -> None:
    """log_format json writes one JSON object per record, redacting keys and tokens like the text format."""
    record = logging.LogRecord("speccyd.x", logging.WARNING, __file__, 1, "key %s used", ("sk-abcdefghijkl",), None)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "warning" and entry["logger"] == "speccyd.x"
    assert entry["message"] == "key sk-[redacted] used"
    assert entry["time"].endswith("Z")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("storage_quota", "500MB", 500_000_000),
        ("storage_quota", "2GiB", 2 * 2**30),
        ("storage_quota", "off", 0),
        ("min_free_disk", "1.5GB", 1_500_000_000),
        ("daily_char_quota", "off", 0),
        ("max_files", "250", 250),
        ("price_tts_1_hd", "27.5", 27.5),
        ("metrics_listen", "[::1]:9420", "[::1]:9420"),
        ("log_format", "JSON", "json"),
    ],
)
def test_operations_settings_parse(tmp_path: Path, key: str, value: str, expected: object) -> None:
    """Sizes, limits, prices, listen addresses and log formats parse from their documented spellings."""
    from speccyd.config.settings import load_settings

    assert getattr(load_settings(tmp_path, {key: value}, env={}), key) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [("storage_quota", "lots"), ("max_files", "-1"), ("price_tts_1", "free"), ("metrics_listen", "9420"),
     ("log_format", "xml"), ("min_free_disk", "1 parsec")],
)  # fmt: skip
def test_operations_settings_reject_bad_values(tmp_path: Path, key: str, value: str) -> None:
    """A bad value is refused with the key and where it came from."""
    from speccyd.config.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=rf"^{key}: .*\(from option"):
        load_settings(tmp_path, {key: value}, env={})


async def test_active_streams_counts_downloads_being_sent(make_client: MakeClient, fake: Any) -> None:
    """speccyd_active_streams is 1 while a download is being sent and back to 0 once it is done."""
    fake.audio_size = 16 * 1024 * 1024  # more than the socket buffers hold: the send waits for the reader
    client = await make_client(metrics="on")
    headers = await sign_in(client)
    _, body = await generate(client, headers, text="a long one")
    await wait_status(client, headers, body["content_hash"])
    streams = ("speccyd_active_streams", ())

    async def active() -> float:
        return (await metric_values(await client.get("/metrics")))[streams]

    async with client.get(f"/files/{body['file_id']}", headers=headers) as download:
        await download.content.readexactly(1024)
        assert await eventually(lambda: _equals(active(), 1), what="one active stream")
        assert len(await download.content.read()) == fake.audio_size - 1024
    assert await eventually(lambda: _equals(active(), 0), what="no active stream")


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == expected
