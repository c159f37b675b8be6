"""GET /files/{file_id} and DELETE /tts/{file_id}: serving, signed URLs, ranges and isolation between users."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from speccyd.config.settings import Settings
from tests.conftest import AppClient, generate, sign_in, wait_status
from tests.fake_upstream import FakeUpstream


async def _ready_file(client: AppClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    _, generated = await generate(client, headers, **body)
    return await wait_status(client, headers, generated["content_hash"])


async def test_content_type_per_format(client: AppClient) -> None:
    """Each format is served with its own Content-Type and a Content-Length."""
    headers = await sign_in(client)
    expected = {
        "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
        "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm",
    }  # fmt: skip
    for fmt, content_type in expected.items():
        ready = await _ready_file(client, headers, format=fmt)
        response = await client.get(f"/files/{ready['file_id']}", headers=headers)
        assert response.status == 200
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Content-Length"] == "4000"


async def test_range_requests(client: AppClient, fake: FakeUpstream) -> None:
    """Range gives 206 with the exact slice; an open-ended and a suffix range work; a bad one is 416."""
    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    full = await (await client.get(f"/files/{ready['file_id']}", headers=headers)).read()
    url = f"/files/{ready['file_id']}"
    response = await client.get(url, headers={**headers, "Range": "bytes=100-199"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(full)}"
    assert await response.read() == full[100:200]
    response = await client.get(url, headers={**headers, "Range": "bytes=3900-"})
    assert await response.read() == full[3900:]
    response = await client.get(url, headers={**headers, "Range": "bytes=-10"})
    assert await response.read() == full[-10:]
    response = await client.get(url, headers={**headers, "Range": "bytes=5000-6000"})
    assert response.status == 416
    response = await client.get(url, headers={**headers, "Range": "bytes=-0"})  # the last zero bytes: none
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(full)}"


async def test_etag_and_if_range(client: AppClient) -> None:
    """The ETag validates conditional requests; If-Range with a stale ETag returns the whole file."""
    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    url = f"/files/{ready['file_id']}"
    etag = (await client.get(url, headers=headers)).headers["ETag"]
    response = await client.get(url, headers={**headers, "If-None-Match": etag})
    assert response.status == 304
    response = await client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": etag})
    assert response.status == 206
    response = await client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": '"stale"'})
    assert response.status == 200
    assert len(await response.read()) == 4000


async def test_signed_url_needs_no_authorization_header(client: AppClient) -> None:
    """The `url` from the API plays without credentials, as AVPlayer would fetch it, with Range."""
    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    response = await client.get(ready["url"])
    assert response.status == 200
    assert len(await response.read()) == 4000
    response = await client.get(ready["url"], headers={"Range": "bytes=0-99"})
    assert response.status == 206


async def test_signed_url_is_bound_to_its_file_and_expiry(client: AppClient) -> None:
    """A signature does not open another file, a changed expiry, or a tampered signature."""
    headers = await sign_in(client)
    first = await _ready_file(client, headers, text="one")
    second = await _ready_file(client, headers, text="two")
    query = first["url"].split("?", 1)[1]
    response = await client.get(f"/files/{second['file_id']}?{query}")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_signature"
    exp = int(query.split("exp=")[1].split("&")[0])
    sig = query.split("sig=")[1]
    later = await client.get(f"/files/{first['file_id']}?exp={exp + 1000}&sig={sig}")
    assert later.status == 401
    tampered = await client.get(f"/files/{first['file_id']}?exp={exp}&sig={sig[:-2]}AA")
    assert tampered.status == 401
    no_exp = await client.get(f"/files/{first['file_id']}?sig={sig}")
    assert no_exp.status == 401


async def test_expired_signed_url_is_refused(client: AppClient, settings: Settings) -> None:
    """A URL whose expiry has passed is refused even with a correct signature."""
    from speccyd.security.crypto import ServerSecrets

    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    user_id = (await (await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})).json())["user_id"]
    past = int(time.time()) - 5
    sig = ServerSecrets.load(settings.secrets_dir).sign_file_url(ready["file_id"], user_id, past)
    response = await client.get(f"/files/{ready['file_id']}?exp={past}&sig={sig}")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "signature_expired"


async def test_no_credentials_is_401(client: AppClient) -> None:
    """Without a token or signature a file is 401, whether it exists or not."""
    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    assert (await client.get(f"/files/{ready['file_id']}")).status == 401
    assert (await client.get(f"/files/{'a' * 32}")).status == 401


async def test_users_cannot_reach_each_others_files(client: AppClient) -> None:
    """Another user's file is 404 to fetch, to delete and to probe by hash; it stays intact."""
    alice = await sign_in(client, "sk-test-alice")
    mallory = await sign_in(client, "sk-test-mallory")
    ready = await _ready_file(client, alice, text="Alice's private notes")
    url = f"/files/{ready['file_id']}"
    unknown = await client.get(f"/files/{'b' * 32}", headers=mallory)
    foreign = await client.get(url, headers=mallory)
    assert foreign.status == unknown.status == 404
    assert await foreign.json() == await unknown.json()
    assert (await client.delete(f"/tts/{ready['file_id']}", headers=mallory)).status == 404
    status = await client.get(f"/tts/{ready['content_hash']}/status", headers=mallory)
    assert status.status == 404
    assert (await client.get(url, headers=alice)).status == 200


async def test_generating_file_streams_instead_of_202(client: AppClient, fake: FakeUpstream) -> None:
    """A file still being generated answers 200 at once and streams (the core's 202 is gone; see test_streaming)."""
    headers = await sign_in(client)
    fake.gate.clear()
    _, body = await generate(client, headers)
    response = await client.get(f"/files/{body['file_id']}", headers=headers)
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    fake.gate.set()
    assert len(await response.read()) == fake.audio_size
    await wait_status(client, headers, body["content_hash"])


async def test_delete_removes_row_and_file(client: AppClient, settings: Settings) -> None:
    """DELETE answers {"deleted": true}, the audio is gone from disk and the file is 404 afterwards."""
    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    audio = list(settings.audio_dir.glob(f"*/{ready['file_id']}.mp3"))
    assert len(audio) == 1
    response = await client.delete(f"/tts/{ready['file_id']}", headers=headers)
    assert response.status == 200
    assert await response.json() == {"deleted": True}
    assert not audio[0].exists()
    assert (await client.get(f"/files/{ready['file_id']}", headers=headers)).status == 404
    assert (await client.delete(f"/tts/{ready['file_id']}", headers=headers)).status == 404


async def test_delete_while_generating_cancels_and_keeps_nothing(
    client: AppClient, fake: FakeUpstream, settings: Settings
) -> None:
    """Deleting a file in flight cancels its job and leaves no audio or temp file behind."""
    headers = await sign_in(client)
    fake.gate.clear()
    _, body = await generate(client, headers)
    response = await client.delete(f"/tts/{body['file_id']}", headers=headers)
    assert response.status == 200
    fake.gate.set()
    assert [p for p in settings.audio_dir.rglob("*") if p.is_file()] == []
    status = await client.get(f"/tts/{body['content_hash']}/status", headers=headers)
    assert status.status == 404


async def test_odd_ids_are_404_json(client: AppClient) -> None:
    """Path traversal and malformed ids never reach the disk: 404 with the JSON envelope."""
    headers = await sign_in(client)
    for path in (
        "/files/../../etc/passwd", "/files/..%2F..%2Fetc%2Fpasswd", "/files/" + "A" * 32, "/files/abc",
        "/files/" + "a" * 33, "/tts/" + "z" * 64 + "/status", "/files/%00", "/files/" + "a" * 32 + "/../x",
    ):  # fmt: skip
        response = await client.get(path, headers=headers)
        assert response.status == 404, path
        assert (await response.json())["error"]["code"] == "not_found"
    response = await client.delete("/tts/..%2Fsecrets", headers=headers)
    assert response.status == 404


# --- Range and conditional requests (RFC 9110) ---


async def _file_and_validators(client: AppClient) -> tuple[str, dict[str, str], str, str, bytes]:
    headers = await sign_in(client)
    ready = await _ready_file(client, headers)
    url = f"/files/{ready['file_id']}"
    response = await client.get(url, headers=headers)
    return url, headers, response.headers["ETag"], response.headers["Last-Modified"], await response.read()


async def test_a_range_in_another_unit_is_ignored(client: AppClient) -> None:
    """Range: items=0-5 (or any unit but bytes) gets the whole file with 200, not 416."""
    url, headers, _, _, full = await _file_and_validators(client)
    for value in ("items=0-5", "pages=1", "none", "bytesx=0-5"):
        response = await client.get(url, headers={**headers, "Range": value})
        assert response.status == 200, value
        assert await response.read() == full


async def test_several_byte_ranges_get_the_whole_file(client: AppClient) -> None:
    """A valid multi-range request (not served as multipart here) gets the whole file, not a 416."""
    url, headers, _, _, full = await _file_and_validators(client)
    response = await client.get(url, headers={**headers, "Range": "bytes=0-9, 20-29"})
    assert response.status == 200
    assert await response.read() == full


async def test_if_range_that_is_neither_an_etag_nor_a_date_ignores_the_range(client: AppClient) -> None:
    """An If-Range that is not an ETag or an HTTP date means the Range is ignored: 200 and the whole file."""
    url, headers, etag, last_modified, full = await _file_and_validators(client)
    for value in ("garbage", "tomorrow", "1764633507", etag.strip('"')):
        response = await client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": value})
        assert response.status == 200, value
        assert await response.read() == full
    response = await client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": last_modified})
    assert response.status == 206
    assert await response.read() == full[:10]
    weak = await client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": f"W/{etag}"})
    assert weak.status == 200  # If-Range needs a strong match


async def test_failed_preconditions_are_412_in_the_envelope(client: AppClient) -> None:
    """A failed If-Match or If-Unmodified-Since is 412 precondition_failed in JSON; a passing one serves."""
    url, headers, etag, last_modified, full = await _file_and_validators(client)
    for condition in (
        {"If-Match": '"other"'},
        {"If-Match": f"W/{etag}"},  # If-Match compares strongly
        {"If-Match": "garbage"},
        {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
        {"If-Match": '"other"', "If-Unmodified-Since": "Wed, 21 Oct 2099 07:28:00 GMT"},
    ):
        response = await client.get(url, headers={**headers, **condition})
        assert response.status == 412, condition
        assert response.headers["Content-Type"].startswith("application/json")
        assert (await response.json())["error"]["code"] == "precondition_failed"
    for condition in (
        {"If-Match": etag},
        {"If-Match": "*"},
        {"If-Match": f'"other", {etag}'},
        {"If-Unmodified-Since": last_modified},  # our own Last-Modified must pass (one-second resolution)
        {"If-Unmodified-Since": "not a date"},  # ignored, as RFC 9110 says
    ):
        response = await client.get(url, headers={**headers, **condition})
        assert response.status == 200, condition
        assert await response.read() == full


async def test_not_modified_uses_the_validators_sent_with_the_file(client: AppClient) -> None:
    """If-None-Match with the ETag, or If-Modified-Since with the Last-Modified sent, is 304 with no body."""
    url, headers, etag, last_modified, _ = await _file_and_validators(client)
    for condition in ({"If-None-Match": etag}, {"If-None-Match": f"W/{etag}"}, {"If-Modified-Since": last_modified}):
        response = await client.get(url, headers={**headers, **condition})
        assert response.status == 304, condition
        assert await response.read() == b""
    response = await client.get(
        url, headers={**headers, "If-None-Match": '"other"', "If-Modified-Since": last_modified}
    )
    assert response.status == 200  # If-None-Match wins over If-Modified-Since


async def test_head_ignores_range(client: AppClient) -> None:
    """Range is defined for GET only: HEAD with a Range answers as for the whole file."""
    url, headers, _, _, full = await _file_and_validators(client)
    response = await client.head(url, headers={**headers, "Range": "bytes=0-9"})
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(full))


async def test_openai_speech_ignores_range_and_conditionals(client: AppClient) -> None:
    """POST /v1/audio/speech answers the whole audio whatever Range, If-Range or If-None-Match it carries."""
    headers = await sign_in(client)
    speech = {"model": "tts-1", "voice": "alloy", "input": "A whole answer."}
    first = await client.post("/v1/audio/speech", json=speech, headers=headers)
    full = await first.read()
    assert first.status == 200 and full
    for extra in ({"Range": "bytes=0-9"}, {"Range": "bytes=0-9", "If-Range": "garbage"}, {"If-None-Match": "*"}):
        response = await client.post("/v1/audio/speech", json=speech, headers={**headers, **extra})
        assert response.status == 200, extra
        assert await response.read() == full


async def test_a_get_racing_a_delete_never_gets_an_empty_audio_404(client: AppClient) -> None:
    """Downloads racing their file's deletion get the whole audio or a JSON 404, never an empty audio/* 404."""
    headers = await sign_in(client)
    for n in range(20):
        ready = await _ready_file(client, headers, text=f"race {n}")
        url = f"/files/{ready['file_id']}"
        gets = [asyncio.create_task(client.get(url, headers=headers)) for _ in range(5)]
        await asyncio.sleep(0)
        deleted = asyncio.create_task(client.delete(f"/tts/{ready['file_id']}", headers=headers))
        gets += [asyncio.create_task(client.get(url, headers=headers)) for _ in range(5)]
        for response in await asyncio.gather(*gets):
            body = await response.read()
            if response.status == 200:
                assert len(body) == 4000
            else:
                assert response.status == 404, response.status
                assert response.headers["Content-Type"].startswith("application/json")
                assert json.loads(body)["error"]["code"] == "not_found"
        assert (await deleted).status == 200


async def test_a_range_sent_twice_is_judged_by_the_first(client: AppClient, fake: FakeUpstream) -> None:
    """Two Range headers, the second unsatisfiable: the first decides (206), never aiohttp's empty 416."""
    headers = await sign_in(client)
    _, body = await generate(client, headers)
    await wait_status(client, headers, body["content_hash"])
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        f"GET /files/{body['file_id']} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: {headers['Authorization']}\r\nRange: bytes=0-1\r\nRange: bytes=99999999-\r\n\r\n".encode()
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 206 "), answer[:300]
    assert (
        answer.partition(b"\r\n\r\n")[2] == FakeUpstream.audio_for(fake.speech_calls[0].body or {}, fake.audio_size)[:2]
    )
