"""Security: isolation between users, tokens, signed URLs, hostile paths and sizes, SSRF, secrets at rest."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import socket
import stat
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yarl

from speccyd.config.settings import Settings
from speccyd.security.crypto import ServerSecrets
from tests.conftest import AppClient, eventually, generate, invoke, sign_in, wait_status
from tests.fake_upstream import FakeUpstream, Fault
from tests.server_process import ServerProcess

MakeClient = Callable[..., Awaitable[AppClient]]


async def _ready_file(client: AppClient, headers: dict[str, str], text: str = "Alice's secret note.") -> dict[str, Any]:
    _, body = await generate(client, headers, text=text)
    return await wait_status(client, headers, body["content_hash"])


async def _envelope(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The error body, asserting it is the JSON envelope and carries no internals."""
    text = await response.text()
    assert "Traceback" not in text and 'File "' not in text
    body: dict[str, Any] = json.loads(text)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


# --- one user against another ---


async def test_other_user_cannot_download_by_session(client: AppClient) -> None:
    """Bob's session gets 404 (not 403) for Alice's file: he cannot even learn that it exists."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    file = await _ready_file(client, alice)
    response = await client.get(f"/files/{file['file_id']}", headers=bob)
    assert response.status == 404
    unknown = await client.get(f"/files/{'0' * 32}", headers=bob)
    assert (await _envelope(response)) == (await _envelope(unknown))


async def test_other_user_cannot_delete(client: AppClient) -> None:
    """Bob's delete of Alice's file is 404 and her file is still served afterwards."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    file = await _ready_file(client, alice)
    response = await client.delete(f"/tts/{file['file_id']}", headers=bob)
    assert response.status == 404
    assert (await client.get(f"/files/{file['file_id']}", headers=alice)).status == 200


async def test_other_user_cannot_probe_content_hash_by_status(client: AppClient, fake: FakeUpstream) -> None:
    """Status of Alice's content hash answers Bob exactly as for a hash nobody ever used."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    file = await _ready_file(client, alice)
    probed = await client.get(f"/tts/{file['content_hash']}/status", headers=bob)
    never = await client.get(f"/tts/{'f' * 64}/status", headers=bob)
    assert probed.status == never.status == 404
    assert (await _envelope(probed)) == (await _envelope(never))


async def test_other_user_cannot_probe_by_generating_the_same_content(client: AppClient, fake: FakeUpstream) -> None:
    """Bob asking for Alice's exact content is a fresh 202 generation with his own key, never her cache hit."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    file = await _ready_file(client, alice)
    status, body = await generate(client, bob, text="Alice's secret note.")
    assert status == 202
    assert body["file_id"] != file["file_id"]
    await wait_status(client, bob, body["content_hash"])
    assert [c.api_key for c in fake.speech_calls] == ["sk-test-alice", "sk-test-bob"]


async def test_other_user_usage_lists_nothing_of_alices(client: AppClient) -> None:
    """Usage figures are per user: Bob's shows none of Alice's files."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    await _ready_file(client, alice)
    usage = await (await client.get("/user/usage", headers=bob)).json()
    assert usage["files_count"] == 0 and usage["storage_used_mb"] == 0


async def test_signed_url_cannot_be_moved_to_another_file(client: AppClient) -> None:
    """Alice's signature on one file does not open another file (hers or Bob's)."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    mine = await _ready_file(client, alice, "first")
    other = await _ready_file(client, alice, "second")
    bobs = await _ready_file(client, bob, "bob's")
    query = mine["url"].split("?", 1)[1]
    for target in (other, bobs):
        response = await client.get(f"/files/{target['file_id']}?{query}")
        assert response.status == 401
        assert (await _envelope(response))["code"] == "invalid_signature"
    assert (await client.get(mine["url"])).status == 200


async def test_a_bogus_signature_answers_the_same_for_an_existing_and_an_unknown_id(client: AppClient) -> None:
    """No existence oracle: a forged signature gets the same status and body whether the file id exists or not."""
    alice = await sign_in(client)
    mine = await _ready_file(client, alice)
    exp = int(time.time()) + 3600
    answers = []
    for file_id in (mine["file_id"], "0" * 32, "f" * 32):
        for sig in ("forged", "A" * 43, ""):
            response = await client.get(f"/files/{file_id}?exp={exp}&sig={sig}")
            answers.append((response.status, await _envelope(response)))
    assert {json.dumps(a, sort_keys=True) for a in answers} == {
        json.dumps((401, {"code": "invalid_signature", "message": "file URL signature is not valid"}), sort_keys=True)
    }


@pytest.mark.parametrize("sig", ["%C3%A9t%C3%A9", "%E2%9C%93" * 10, "%FF%FE", "abc%00def", "%F0%9F%98%80"])
async def test_a_non_ascii_signature_is_401_not_500(client: AppClient, sig: str) -> None:
    """A signature with non-ASCII (or undecodable) characters is a 401 in the envelope, never a 500."""
    alice = await sign_in(client)
    mine = await _ready_file(client, alice)
    for file_id in (mine["file_id"], "0" * 32):
        response = await client.get(yarl.URL(f"/files/{file_id}?exp={int(time.time()) + 60}&sig={sig}", encoded=True))
        assert response.status == 401
        assert (await _envelope(response))["code"] == "invalid_signature"


@pytest.mark.parametrize("exp", ["%D9%A1" * 10, "%EF%BC%91" * 10, "1_9999999999", "+9999999999", "%209999999999"])
async def test_only_ascii_digits_are_an_expiry(client: AppClient, settings: Settings, exp: str) -> None:
    """Full-width or Arabic-Indic digits, underscores, signs and spaces in exp are refused, even when Python's
    int() would read them as the signed number."""
    alice = await sign_in(client)
    mine = await _ready_file(client, alice)
    user_id = (await (await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})).json())["user_id"]
    sig = ServerSecrets.load(settings.secrets_dir).sign_file_url(mine["file_id"], user_id, 9999999999)
    assert (await client.get(f"/files/{mine['file_id']}?exp=9999999999&sig={sig}")).status == 200
    response = await client.get(yarl.URL(f"/files/{mine['file_id']}?exp={exp}&sig={sig}", encoded=True))
    assert response.status == 401
    assert (await _envelope(response))["code"] == "invalid_signature"


async def test_a_valid_session_decides_over_an_expired_signed_url(client: AppClient, settings: Settings) -> None:
    """With a valid session header, an expired signed URL does not matter: a live file is served, an expired
    one is 410, another user's file is 404."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    mine = await _ready_file(client, alice)
    query = f"exp={int(time.time()) - 60}&sig=whatever"
    response = await client.get(f"/files/{mine['file_id']}?{query}", headers=alice)
    assert response.status == 200
    assert len(await response.read()) > 0
    response = await client.get(f"/files/{mine['file_id']}?{query}", headers=bob)
    assert response.status == 404
    response = await client.get(
        f"/files/{mine['file_id']}?{mine['url'].split('?', 1)[1]}", headers={"Authorization": "Bearer x"}
    )
    assert response.status == 401 and (await _envelope(response))["code"] == "invalid_session"
    unknown = await client.get(f"/files/{'0' * 32}?{query}", headers=alice)
    assert unknown.status == 404


async def test_a_session_with_an_expired_url_gets_410_for_expired_audio(make_client: MakeClient) -> None:
    """An expired file asked for with a valid session and an expired URL is 410 expired, not 401."""
    client = await make_client(retention="1s")
    alice = await sign_in(client)
    mine = await _ready_file(client, alice)

    async def expired() -> bool:
        response = await client.get(f"/files/{mine['file_id']}?exp=1&sig=x", headers=alice)
        return response.status == 410 and (await _envelope(response))["code"] == "expired"

    await eventually(expired, timeout=10, what="the audio to expire")


# --- session tokens ---


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens(secrets: ServerSecrets, user_id: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + 3600}
    good = jwt.encode(claims, secrets.jwt_key, algorithm="HS256")
    header, payload, signature = good.split(".")
    other_server = ServerSecrets.generate()
    with warnings.catch_warnings():  # PyJWT warns that a 32-byte key is short for HS512; that is the point
        warnings.simplefilter("ignore")
        hs512 = jwt.encode(claims, secrets.jwt_key, algorithm="HS512")
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg none with signature": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}",
        "wrong key": jwt.encode(claims, b"x" * 32, algorithm="HS256"),
        "other server": jwt.encode(claims, other_server.jwt_key, algorithm="HS256"),
        "url-signing key": jwt.encode(claims, secrets.url_key, algorithm="HS256"),
        "raw session key": jwt.encode(claims, secrets.session_key, algorithm="HS256"),
        "HS512 with the right key": hs512,
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, secrets.jwt_key, algorithm="HS256"),
        "no exp": jwt.encode({"sub": user_id, "iat": now}, secrets.jwt_key, algorithm="HS256"),
        "sub not a string": jwt.encode({**claims, "sub": 42}, secrets.jwt_key, algorithm="HS256"),
        "payload swapped": f"{header}.{_b64({**claims, 'sub': 'someone-else'})}.{signature}",
        "truncated signature": good[:-4],
        "garbage": "not-a-token",
        "empty parts": "..",
        "huge": "a" * 6000,
    }


async def test_bad_session_tokens_are_refused(client: AppClient, settings: Settings) -> None:
    """Forged, expired, alg:none, wrong-key, other-server and malformed tokens all get 401 in the envelope."""
    alice = await sign_in(client, "sk-test-alice")
    file = await _ready_file(client, alice)
    user_id = (await (await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})).json())["user_id"]
    secrets = ServerSecrets.load(settings.secrets_dir)
    for name, token in _bad_tokens(secrets, user_id).items():
        for method, path in (("GET", f"/files/{file['file_id']}"), ("GET", "/user/usage"), ("POST", "/tts/generate")):
            response = await client.request(method, path, headers={"Authorization": f"Bearer {token}"}, json={})
            assert response.status == 401, f"{name} on {path}: {response.status}"
            assert (await _envelope(response))["code"] in {"invalid_session", "session_expired"}, name


async def test_wrong_authorization_schemes_are_refused(client: AppClient) -> None:
    """Only 'Bearer <token>' is accepted; Basic, empty and missing credentials are 401."""
    for header in ("Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "Token abc", "", "bearer"):
        response = await client.get("/user/usage", headers={"Authorization": header})
        assert response.status == 401, header
        await _envelope(response)
    assert (await client.get("/user/usage")).status == 401


async def test_token_for_unknown_user_cannot_generate(make_client: MakeClient, settings: Settings) -> None:
    """A validly signed token for a user the database does not know is refused, never a 500."""
    client = await make_client()
    await sign_in(client)  # the server has started and written its secrets
    secrets = ServerSecrets.load(settings.secrets_dir)
    now = int(time.time())
    token = jwt.encode({"sub": "0" * 32, "iat": now, "exp": now + 60}, secrets.jwt_key, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    response = await client.post("/tts/generate", json={"text": "hi"}, headers=headers)
    assert response.status == 401
    assert (await _envelope(response))["code"] == "invalid_session"


# --- signed URLs ---


async def test_signed_url_works_until_expiry_and_not_after(client: AppClient, settings: Settings) -> None:
    """The URL serves its file without a session; an expired or extended expiry is refused."""
    alice = await sign_in(client)
    file = await _ready_file(client, alice)
    assert (await client.get(file["url"])).status == 200
    secrets = ServerSecrets.load(settings.secrets_dir)
    row_user = (await (await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})).json())["user_id"]
    past = int(time.time()) - 1
    expired_sig = secrets.sign_file_url(file["file_id"], row_user, past)
    response = await client.get(f"/files/{file['file_id']}?exp={past}&sig={expired_sig}")
    assert response.status == 401
    assert (await _envelope(response))["code"] == "signature_expired"
    sig = file["url"].split("sig=", 1)[1]
    extended = await client.get(f"/files/{file['file_id']}?exp={int(time.time()) + 10**9}&sig={sig}")
    assert extended.status == 401


@pytest.mark.parametrize(
    "query",
    ["exp=abc&sig=x", "sig=x", "exp=&sig=", "exp=99999999999999999999999&sig=x", "exp=-1&sig=x", "exp=1e10&sig=x",
     "exp=1&exp=2&sig=x", "sig=%00&exp=9999999999", "exp=9999999999&sig=" + "A" * 5000],
)  # fmt: skip
async def test_malformed_signed_urls_are_refused(client: AppClient, query: str) -> None:
    """Garbage in exp or sig is a 401 (or 404) in the JSON envelope, never a 500 or the file."""
    alice = await sign_in(client)
    file = await _ready_file(client, alice)
    response = await client.get(f"/files/{file['file_id']}?{query}")
    assert response.status in (401, 404), response.status
    await _envelope(response)


# --- hostile paths and sizes ---

ODD_IDS = [
    "..", "../speccyd.db", "..%2fspeccyd.db", "%2e%2e%2fspeccyd.db", "%2e%2e", "....//....//etc/passwd",
    "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 31 + "%00", "%00" * 32, "0" * 32 + "/../..", "0" * 32 + ".mp3",
    "${jndi:ldap://x}", "%ff%fe", "ünïcødé", "0" * 4096,
]  # fmt: skip
PATH_TEMPLATES = [("GET", "/files/{}"), ("DELETE", "/tts/{}"), ("GET", "/tts/{}/status")]


@pytest.mark.parametrize("odd", ODD_IDS)
async def test_odd_ids_in_every_path_parameter(client: AppClient, odd: str) -> None:
    """Traversal and malformed ids never reach the disk: 404 or 405 in the envelope, never a file or a 500."""
    alice = await sign_in(client)
    await _ready_file(client, alice)
    for method, template in PATH_TEMPLATES:
        response = await client.request(method, template.format(odd), headers=alice)
        assert response.status in (400, 404, 405), f"{method} {template.format(odd)}: {response.status}"
        assert response.headers["Content-Type"].startswith("application/json")
        await _envelope(response)


async def test_oversized_body_is_413_in_the_envelope(client: AppClient) -> None:
    """A body over the body limit is refused with 413 before it is parsed."""
    alice = await sign_in(client)
    body = json.dumps({"text": "a" * (2 * 1024 * 1024)}).encode()
    json_type = {"Content-Type": "application/json"}
    response = await client.post("/tts/generate", data=io.BytesIO(body), headers={**alice, **json_type})
    assert response.status == 413
    assert (await _envelope(response))["code"] == "body_too_large"
    response = await client.post("/auth/verify", data=io.BytesIO(body), headers=json_type)
    assert response.status == 413


async def test_oversized_headers_and_urls_are_refused_without_a_traceback(client: AppClient) -> None:
    """Headers or URLs past aiohttp's 8 KiB line limit get a 400 in the JSON envelope, no 5xx, no traceback."""
    for kwargs in ({"headers": {"X-Big": "a" * 100_000}}, {"headers": {f"X-{i}": "a" for i in range(300)}}):
        response = await client.get("/healthz", **kwargs)  # type: ignore[arg-type]
        assert response.status == 400
        assert "Traceback" not in await response.text()
        assert (await _envelope(response))["code"] == "bad_request"
    response = await client.get("/healthz?" + "a" * 100_000)
    assert response.status == 400
    assert (await _envelope(response))["code"] == "bad_request"


# --- rate limits and SSRF ---


async def test_sign_in_failures_are_rate_limited(make_client: MakeClient, fake: FakeUpstream) -> None:
    """After auth_rate_limit refused keys, even a good key waits (429 with Retry-After) and the upstream is spared."""
    client = await make_client(auth_rate_limit=3)
    for i in range(3):
        response = await client.post("/auth/verify", json={"openai_token": f"sk-wrong-{i}"})
        assert response.status == 401
    calls = len(fake.calls)
    for token in ("sk-wrong-again", "sk-test-alice"):
        response = await client.post("/auth/verify", json={"openai_token": token})
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await _envelope(response))["code"] == "too_many_failed_sign_ins"
    assert len(fake.calls) == calls


async def test_request_cannot_steer_the_upstream(client: AppClient, fake: FakeUpstream) -> None:
    """Fields and headers naming another base URL are ignored: every call goes to the configured upstream."""
    steer = {"base_url": "http://127.0.0.1:9/v1", "openai_base_url": "http://127.0.0.1:9/v1", "api_base": "x"}
    headers = {"X-Forwarded-Host": "127.0.0.1:9", "OpenAI-Base-URL": "http://127.0.0.1:9/v1", "Forwarded": "host=x"}
    response = await client.post("/auth/verify", json={"openai_token": "sk-test-alice", **steer}, headers=headers)
    assert response.status == 200
    alice = {"Authorization": f"Bearer {(await response.json())['session_token']}", **headers}
    status, body = await generate(client, alice, text="steer me", **steer)
    assert status == 202
    await wait_status(client, alice, body["content_hash"])
    assert [c.path for c in fake.calls] == ["/v1/models", "/v1/audio/speech"]


# --- secrets at rest and in logs ---


async def test_secrets_and_data_dir_permissions(settings: Settings) -> None:
    """The data dir, secrets dir and audio dir are 0700; key files, config and database are 0600."""
    from speccyd.security.provision import init_data_dir

    await init_data_dir(settings)
    for directory in (settings.data_dir, settings.secrets_dir, settings.audio_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [*settings.secrets_dir.iterdir(), settings.config_path, settings.db_path]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_audio_files_are_private(client: AppClient, settings: Settings) -> None:
    """Audio files are written 0600 inside 0700 directories."""
    alice = await sign_in(client)
    file = await _ready_file(client, alice)
    path = next(settings.audio_dir.glob(f"*/{file['file_id']}.*"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.process
async def test_no_secret_in_any_log_line_or_database_column(
    tmp_path: Path, upstream_url: str, fake: FakeUpstream
) -> None:
    """After a full run at debug level, no API key, session token or URL signature is in the log or data dir."""
    data_dir = tmp_path / "data"
    server = ServerProcess(
        data_dir, upstream_url, tmp_path / "server.log", env={"SPECCY_LOG_LEVEL": "debug", "SPECCY_METRICS": "on"}
    )
    await server.start()
    keys = ["sk-test-secret-alice-0123456789", "sk-test-secret-bob-9876543210"]
    secrets: list[str] = [*keys, "sk-refused-key-5555555555"]
    async with server, aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/auth/verify", json={"openai_token": secrets[-1]}) as r:
            assert r.status == 401
        for key in keys:
            async with http.post(f"{server.url}/auth/verify", json={"openai_token": key}) as r:
                token = (await r.json())["session_token"]
            secrets.append(token)
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{server.url}/tts/generate", json={"text": key[-4:]}, headers=headers) as r:
                body = await r.json()
            secrets.append(body["url"].split("sig=", 1)[1])

            async def ready(body: dict[str, Any] = body, headers: dict[str, str] = headers) -> bool:
                async with http.get(f"{server.url}/tts/{body['content_hash']}/status", headers=headers) as r:
                    return bool((await r.json())["status"] == "ready")

            await eventually(ready, what="generation")
            async with http.get(f"{server.url}{body['url']}", headers={"Range": "bytes=0-9"}) as r:
                assert r.status == 206
            async with http.get(f"{server.url}/files/{body['file_id']}", headers=headers) as r:
                assert r.status == 200
            async with http.get(f"{server.url}/files/{body['file_id']}?exp=1&sig={secrets[-1]}") as r:
                assert r.status == 401
            async with http.delete(f"{server.url}/tts/{body['file_id']}", headers=headers) as r:
                assert r.status == 200
            await _exercise_newer_endpoints(http, server.url, key, headers, fake, secrets)
    await server.kill(signal.SIGTERM)
    log = server.log_path.read_bytes()
    assert b"listening on" in log and b"/tts/generate" in log  # the log did record the run
    assert b"/v1/audio/speech" in log and b"/files/" in log and b"/metrics" in log
    stored = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "speccyd.db" for p in stored)
    for secret in secrets:
        needle = secret.encode()
        assert needle not in log, f"secret in the log: {secret[:12]}..."
        for path in stored:
            assert needle not in path.read_bytes(), f"secret in {path}"


async def _exercise_newer_endpoints(
    http: aiohttp.ClientSession, url: str, key: str, headers: dict[str, str], fake: FakeUpstream, secrets: list[str]
) -> None:
    """/v1 with the key, the token, a fresh key and a refused one; library pages; meta; a live stream by signed
    URL; metrics, models and the contract. Every key and signature handed out is added to `secrets`."""
    fresh, refused = f"sk-test-v1-only-{key[-6:]}-4444", f"sk-refused-v1-{key[-6:]}-3333"
    secrets += [fresh, refused]
    speech = {"model": "tts-1", "voice": "alloy", "input": f"v1 {key[-4:]}"}
    for bearer, status in ((key, 200), (headers["Authorization"][7:], 200), (fresh, 200), (refused, 401)):
        async with http.post(f"{url}/v1/audio/speech", json=speech, headers={"Authorization": f"Bearer {bearer}"}) as r:
            assert r.status == status
            await r.read()
    async with http.get(f"{url}/files?since=0&limit=100", headers=headers) as r:
        page = await r.json()
    secrets += [f["url"].split("sig=", 1)[1] for f in page["files"]]
    async with http.get(f"{url}/files/{page['files'][0]['file_id']}/meta", headers=headers) as r:
        secrets.append((await r.json())["url"].split("sig=", 1)[1])
    fake.gate.clear()
    try:
        async with http.post(f"{url}/tts/generate", json={"text": f"live {key[-4:]}"}, headers=headers) as r:
            live = await r.json()
        secrets.append(live["url"].split("sig=", 1)[1])
        async with http.get(f"{url}{live['url']}", headers={"Range": "bytes=0-"}) as r:
            assert r.status == 200
            fake.gate.set()
            assert len(await r.read()) == fake.audio_size
    finally:
        fake.gate.set()
    for path in ("/metrics", "/openapi.json", "/v1/models", "/v1/models/tts-1"):
        async with http.get(f"{url}{path}") as r:
            assert r.status == 200


# --- slow clients ---


@pytest.mark.process
async def test_slowloris_cannot_exhaust_connections(tmp_path: Path, upstream_url: str) -> None:
    """Clients trickling headers or bodies are cut off after client_timeout, and others are served meanwhile."""
    server = ServerProcess(
        tmp_path / "data", upstream_url, tmp_path / "server.log", env={"SPECCY_CLIENT_TIMEOUT": "1s"}
    )
    await server.start()
    loop = asyncio.get_running_loop()
    slow: list[socket.socket] = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setblocking(False)
            if i % 2:
                await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            else:
                body_start = b'{"openai_token": "sk-'
                head = b"POST /auth/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                await loop.sock_sendall(sock, head + body_start)
            slow.append(sock)
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as r:
            assert r.status == 200

        async def trickle_then_closed(sock: socket.socket) -> bool:
            # Keep trickling one byte at a time; the server must hang up anyway.
            for _ in range(100):
                try:
                    await loop.sock_sendall(sock, b"a")
                    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.1)
                except TimeoutError:
                    continue
                except OSError:
                    return True
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    return True
            return False

        closed = await asyncio.gather(*(trickle_then_closed(s) for s in slow))
        assert all(closed), f"{closed.count(False)} slow connections still open"
        for garbage in (
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            b"\x16\x03\x01 tls?\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(garbage)
            assert (await reader.read())[9:12] == b"400"
            writer.close()
    finally:
        for sock in slow:
            sock.close()
        await server.kill(signal.SIGTERM)
    # Malformed requests are one log line each, never a traceback anyone on the LAN could repeat.
    log = server.log_path.read_text()
    assert "Traceback" not in log
    assert "rejected a malformed request" in log


@pytest.mark.process
async def test_log_lines_cannot_be_forged_through_the_path(tmp_path: Path, upstream_url: str) -> None:
    """A path with %0a or %1b is logged percent-encoded: no forged line, no terminal escape sequence."""
    server = ServerProcess(tmp_path / "data", upstream_url, tmp_path / "server.log")
    await server.start()
    async with server, aiohttp.ClientSession() as http:
        for raw in ("/x%0a2026-01-01%2000:00:00%20INFO%20speccyd:%20FORGED", "/files/%1b[2J%0d%0aFORGED", "/%00FORGED"):
            async with http.get(yarl.URL(server.url + raw, encoded=True)) as r:
                assert r.status == 404
        await server.kill(signal.SIGTERM)
    log = server.log_path.read_bytes()
    assert b"FORGED" in log  # the requests were logged ...
    assert all(line.find(b"FORGED") > line.find(b" GET ") > 0 for line in log.splitlines() if b"FORGED" in line)
    assert b"\x1b" not in log and b"\x00" not in log and b"\r" not in log  # ... on their own lines, inert


async def test_upstream_error_echoing_the_key_is_redacted(
    client: AppClient, fake: FakeUpstream, settings: Settings
) -> None:
    """An upstream 401 that quotes the key ("Incorrect API key provided: sk-...") is stored and shown without it."""
    key = "sk-test-echoed-0123456789abcdef"
    headers = await sign_in(client, key)
    fake.faults.append(Fault(status=401, message=f"Incorrect API key provided: {key}. Find yours at ..."))
    _, body = await generate(client, headers, text="echo")
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert failed["error"] == "upstream error 401: Incorrect API key provided: [redacted]. Find yours at ..."
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert b"0123456789abcdef" not in path.read_bytes(), path


KEY_SHAPES = ["local-test-Zq9.x/y+z=_secret-42", "local-test-" + "A" * 40, "sk-test-with spaces? no-dots.only"]


@pytest.mark.parametrize("key", KEY_SHAPES, ids=["punctuated", "long", "odd"])
async def test_the_exact_key_sent_upstream_is_cut_from_every_stored_or_logged_message(
    client: AppClient, fake: FakeUpstream, settings: Settings, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    """Whatever its shape, the key speccyd sent is removed from upstream messages: the stored error, the
    status and /v1 answers, the 502 of a sign-in the upstream could not check, and the log."""
    if " " in key:
        key = key.replace(" ", "-")
    headers = await sign_in(client, key)
    fake.faults.append(Fault(status=400, message=f"bad request from {key}; key={key}"))
    _, body = await generate(client, headers, text="echo my key")
    failed = await wait_status(client, headers, body["content_hash"], "failed")
    assert key not in failed["error"] and "[redacted]" in failed["error"]
    fake.faults.append(Fault(status=403, message=f"{key} may not use this model"))
    speech = {"model": "tts-1", "voice": "alloy", "input": "v1 echo"}
    answer = await client.post("/v1/audio/speech", json=speech, headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 403 and key not in await answer.text()
    fake.models_status, fake.echo_key = 500, True
    unchecked = await client.post("/auth/verify", json={"openai_token": key + "-other"})
    assert unchecked.status == 502 and key not in await unchecked.text()
    assert key not in caplog.text
    await client.close()
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


# --- the endpoints added after the core: library, /v1, live streams, key cache, metrics, backups ---


async def _user_id(client: AppClient, key: str) -> str:
    response = await client.post("/auth/verify", json={"openai_token": key})
    return str((await response.json())["user_id"])


async def _all_pages(client: AppClient, headers: dict[str, str], limit: int) -> dict[str, list[dict[str, Any]]]:
    """Follow next_cursor from 0 to the end: every file and tombstone the library shows this user."""
    files: list[dict[str, Any]] = []
    deleted: list[dict[str, Any]] = []
    cursor = "0"
    for _ in range(100):
        response = await client.get("/files", params={"since": cursor, "limit": str(limit)}, headers=headers)
        assert response.status == 200
        page = await response.json()
        files += page["files"]
        deleted += page["deleted"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    return {"files": files, "deleted": deleted}


async def test_library_never_shows_another_users_files_tombstones_or_generations(
    client: AppClient, fake: FakeUpstream
) -> None:
    """Bob's sync, at any page size, lists only his own files; Alice's ready, deleted and generating files
    are absent, and their meta is the same 404 as an id that never existed."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    ready = (await _ready_file(client, alice, "kept"))["file_id"]
    gone = (await _ready_file(client, alice, "deleted"))["file_id"]
    assert (await client.delete(f"/tts/{gone}", headers=alice)).status == 200
    bobs = (await _ready_file(client, bob, "bob's own"))["file_id"]
    fake.gate.clear()
    try:
        _, generating = await generate(client, alice, text="still generating")
        for limit in (1, 2, 1000):
            seen = await _all_pages(client, bob, limit)
            assert [f["file_id"] for f in seen["files"]] == [bobs]
            assert seen["deleted"] == []
        never = await _envelope(await client.get(f"/files/{'0' * 32}/meta", headers=bob))
        for file_id in (ready, gone, generating["file_id"]):
            response = await client.get(f"/files/{file_id}/meta", headers=bob)
            assert response.status == 404
            assert await _envelope(response) == never
        mine = await _all_pages(client, alice, 1)
        assert {f["file_id"] for f in mine["files"]} == {ready, generating["file_id"]}
        assert [d["file_id"] for d in mine["deleted"]] == [gone]
    finally:
        fake.gate.set()


async def test_openai_key_never_gets_another_users_cached_audio(client: AppClient, fake: FakeUpstream) -> None:
    """The same /v1 request with Bob's key is Bob's own generation (his key upstream), never Alice's cached file."""
    body = {"model": "tts-1", "voice": "alloy", "input": "Alice asked first"}
    files = {}
    for key in ("sk-test-alice", "sk-test-bob", "sk-test-alice"):
        response = await client.post("/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200
        await response.read()
        files.setdefault(key, set()).add(response.headers["X-Speccy-File-Id"])
    assert len(files["sk-test-alice"]) == len(files["sk-test-bob"]) == 1
    assert files["sk-test-alice"] != files["sk-test-bob"]
    assert [c.api_key for c in fake.speech_calls] == ["sk-test-alice", "sk-test-bob"]
    # Nor through a session: Bob's token on /v1 reaches Bob's file.
    bob = await sign_in(client, "sk-test-bob")
    response = await client.post("/v1/audio/speech", json=body, headers=bob)
    assert response.headers["X-Speccy-File-Id"] in files["sk-test-bob"]


async def test_revoked_session_fails_on_every_authenticated_endpoint(client: AppClient, data_dir: Path) -> None:
    """After `speccyd users revoke`, the old token is 401 session_revoked everywhere, /v1 included."""

    alice = await sign_in(client)
    file = await _ready_file(client, alice)
    uid = await _user_id(client, "sk-test-alice")
    result = await invoke("users", "revoke", uid, "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output

    async def revoked() -> bool:
        return (await client.get("/user/usage", headers=alice)).status == 401

    await eventually(revoked, timeout=5, what="the revocation to reach the server")
    fid, digest = file["file_id"], file["content_hash"]
    speech = {"model": "tts-1", "voice": "alloy", "input": "after revoke"}
    for method, path, body in [
        ("GET", "/user/usage", None), ("GET", "/files", None), ("GET", "/files?since=0&limit=5", None),
        ("GET", f"/files/{fid}/meta", None), ("GET", f"/files/{fid}", None), ("HEAD", f"/files/{fid}", None),
        ("GET", f"/tts/{digest}/status", None), ("POST", "/tts/generate", {"text": "after revoke"}),
        ("DELETE", f"/tts/{fid}", None), ("POST", "/v1/audio/speech", speech),
    ]:  # fmt: skip
        response = await client.request(method, path, json=body, headers=alice)
        assert response.status == 401, f"{method} {path}: {response.status}"
        if method == "HEAD":
            continue
        error = (await response.json())["error"]
        assert error["code"] == "session_revoked", f"{method} {path}: {error}"
        if path.startswith("/v1/"):
            assert set(error) == {"message", "type", "param", "code"}
    # Nothing was deleted or generated by the refused requests; a fresh sign-in sees the file.
    again = await sign_in(client)
    assert (await client.get(f"/files/{fid}", headers=again)).status == 200


async def test_live_stream_of_another_users_generating_file_is_404(client: AppClient, fake: FakeUpstream) -> None:
    """While Alice's file generates, Bob gets 404 for it by session (GET, HEAD, meta, status, delete); a signed
    URL streams only its own file and only until its expiry; Alice's generation is untouched."""
    alice, bob = await sign_in(client, "sk-test-alice"), await sign_in(client, "sk-test-bob")
    fake.gate.clear()
    try:
        _, mine = await generate(client, alice, text="Alice's live note")
        _, his = await generate(client, bob, text="Bob's live note")
        never = await _envelope(await client.get(f"/files/{'0' * 32}", headers=bob))
        for method, path in [
            ("GET", f"/files/{mine['file_id']}"), ("GET", f"/files/{mine['file_id']}/meta"),
            ("GET", f"/tts/{mine['content_hash']}/status"), ("DELETE", f"/tts/{mine['file_id']}"),
        ]:  # fmt: skip
            response = await client.request(method, path, headers=bob)
            assert response.status == 404, f"{method} {path}"
            assert (await _envelope(response))["code"] == never["code"]
        assert (await client.head(f"/files/{mine['file_id']}", headers=bob)).status == 404
        live = await client.get(mine["url"])  # the signed URL streams the generating file without a session
        assert live.status == 200 and live.headers["Content-Type"] == "audio/mpeg"
        live.close()
        query = mine["url"].split("?", 1)[1]
        moved = await client.get(f"/files/{his['file_id']}?{query}")
        assert moved.status == 401
        assert (await _envelope(moved))["code"] == "invalid_signature"
        expired = await client.get(f"/files/{mine['file_id']}?exp={int(time.time()) - 1}&sig=x")
        assert expired.status == 401
    finally:
        fake.gate.set()
    await wait_status(client, alice, mine["content_hash"])
    assert (await client.get(f"/files/{mine['file_id']}", headers=alice)).status == 200


async def test_key_cache_and_database_never_hold_a_key(client: AppClient, settings: Settings) -> None:
    """The key cache maps HMACs to user ids; no API key is in it, nor anywhere in the data dir."""
    from speccyd.appkeys import KEY_CACHE

    keys = ["sk-test-cache-alice-0123456789", "sk-test-cache-bob-9876543210"]
    body = {"model": "tts-1", "voice": "alloy", "input": "cache me"}
    await sign_in(client, keys[0])
    for key in keys:
        response = await client.post("/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200
    cache = client.server.app[KEY_CACHE]
    assert len(cache) == 2
    held = repr(vars(cache))
    for key in keys:
        assert key not in held and key[3:] not in held
    entries: dict[str, tuple[str, float]] = vars(cache)["_entries"]
    assert all(len(lookup) == 64 and int(lookup, 16) >= 0 for lookup in entries)  # hex HMACs only
    await client.close()  # the database and WAL as they stay on disk
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for key in keys:
                assert key.encode() not in data, path


async def test_metrics_leak_no_user_ids_keys_tokens_or_files(make_client: MakeClient, fake: FakeUpstream) -> None:
    """/metrics, after traffic from two users over every endpoint, names routes and counts only."""
    client = await make_client(metrics="on")
    keys = ["sk-test-metrics-alice-000", "sk-test-metrics-bob-111"]
    secrets: list[str] = [*keys]
    for key in keys:
        headers = await sign_in(client, key)
        secrets += [await _user_id(client, key), headers["Authorization"].split()[1]]
        file = await _ready_file(client, headers, f"private text of {key}")
        secrets += [file["file_id"], file["content_hash"], f"private text of {key}", file["url"].split("sig=")[1]]
        await client.get(file["url"], headers={"Range": "bytes=0-9"})
        await client.get(f"/files/{file['file_id']}/meta", headers=headers)
        await client.get("/files?since=0", headers=headers)
        body = {"model": "tts-1", "voice": "alloy", "input": f"v1 text of {key}"}
        await client.post("/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {key}"})
        await client.get(f"/{key}")  # an unmatched path holding a key
        await client.get(f"/files/{file['file_id']}x")
    text = await (await client.get("/metrics")).text()
    assert "speccyd_http_requests_total" in text and 'route="unmatched"' in text
    for secret in secrets:
        assert secret not in text, secret[:16]


def _secret_forms(secrets_dir: Path) -> dict[str, bytes]:
    """Every server secret (and the subkeys derived from it) as raw bytes, hex and base64."""
    loaded = ServerSecrets.load(secrets_dir)
    raw = {"session": loaded.session_key, "encryption": loaded.encryption_key, "jwt": loaded.jwt_key,
           "url": loaded.url_key}  # fmt: skip
    raw.update({p.name: p.read_bytes() for p in secrets_dir.iterdir() if p.is_file()})
    forms = {}
    for name, value in raw.items():
        forms[f"{name} raw"] = value
        forms[f"{name} hex"] = value.hex().encode()
        forms[f"{name} base64"] = base64.b64encode(value).rstrip(b"=")
        forms[f"{name} base64url"] = base64.urlsafe_b64encode(value).rstrip(b"=")
    return forms


async def test_backup_without_secrets_holds_no_secret_in_any_byte(
    client: AppClient, settings: Settings, tmp_path: Path
) -> None:
    """`backup --no-secrets`: no secret (raw, hex or base64), API key or session token in any archived byte."""
    import tarfile

    key = "sk-test-backup-0123456789abcdef"
    headers = await sign_in(client, key)
    await _ready_file(client, headers, "in the backup")
    dest = tmp_path / "b.tar.gz"
    result = await invoke("backup", str(dest), "--no-secrets", "--data-dir", str(settings.data_dir))
    assert result.exit_code == 0, result.output
    forms = _secret_forms(settings.secrets_dir)
    forms["api key"] = key.encode()
    forms["session token"] = headers["Authorization"].split()[1].encode()
    with tarfile.open(dest) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert "speccyd.db" in members and not any(name.startswith("secrets") for name in members)
    for name, data in members.items():
        for what, needle in forms.items():
            assert needle not in data, f"{what} in {name}"


def _tamper_backup(backup: Path, file_id: str, fmt: str) -> None:
    """Rename the backup's one ready file in its database and plant matching bytes where that name points."""
    import hashlib
    import sqlite3

    db = backup / "speccyd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audio_files SET id = ?, format = ? WHERE status = 'ready'", (file_id, fmt))
    conn.close()
    payload = b"#!/bin/sh\necho planted\n"
    target = backup / "audio" / file_id[:2] / f"{file_id}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE audio_files SET size_bytes = ?, sha256 = ? WHERE status = 'ready'",
            (len(payload), hashlib.sha256(payload).hexdigest()),
        )
    conn.close()
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["database_sha256"] = hashlib.sha256(db.read_bytes()).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("file_id", "fmt"),
    [("../../../../escaped", "sh"), ("..", "/../../../escaped"), ("0" * 32, "mp3/../../../../escaped")],
    ids=["id", "dotdot id", "format"],
)
async def test_restore_refuses_a_database_naming_paths_outside_the_data_dir(
    client: AppClient, settings: Settings, tmp_path: Path, file_id: str, fmt: str
) -> None:
    """A crafted backup whose database names files like ../../x (with matching checksums) is refused, and
    nothing is written outside the new data dir (restore often runs as root)."""

    await _ready_file(client, await sign_in(client), "to be tampered with")
    backup = tmp_path / "deep" / "er" / "backup"
    assert (await invoke("backup", str(backup), "--data-dir", str(settings.data_dir))).exit_code == 0
    _tamper_backup(backup, file_id, fmt)
    before = {p for p in tmp_path.rglob("*")}
    target = tmp_path / "deep" / "er" / "restored"
    result = await invoke("restore", str(backup), "--data-dir", str(target))
    assert result.exit_code == 1, result.output
    # Refused by the layout check (the planted file is not a backup member) or by the database's own names.
    assert "cannot be a speccyd file" in result.output or "is not part of a speccyd backup" in result.output
    assert "Traceback" not in result.output
    assert {p for p in tmp_path.rglob("*")} - before == set()


async def test_restore_refuses_linked_secrets(client: AppClient, settings: Settings, tmp_path: Path) -> None:
    """A backup directory whose secrets are symlinks (say to /etc/shadow) is refused, not copied through."""

    await sign_in(client)
    backup = tmp_path / "backup"
    assert (await invoke("backup", str(backup), "--data-dir", str(settings.data_dir))).exit_code == 0
    outside = tmp_path / "not-a-secret"
    outside.write_text("private data of the machine")
    victim = next((backup / "secrets").iterdir())
    victim.unlink()
    victim.symlink_to(outside)
    result = await invoke("restore", str(backup), "--data-dir", str(tmp_path / "restored"))
    assert result.exit_code == 1, result.output
    assert "is a symbolic link" in result.output
    assert not (tmp_path / "restored").exists()
