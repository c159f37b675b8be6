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

from speccyd.crypto import ServerSecrets
from speccyd.settings import Settings
from tests.conftest import AppClient, eventually, generate, sign_in, wait_status
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
    """A body over 1 MiB is refused with 413 before it is parsed."""
    alice = await sign_in(client)
    body = json.dumps({"text": "a" * (2 * 1024 * 1024)}).encode()
    json_type = {"Content-Type": "application/json"}
    response = await client.post("/tts/generate", data=io.BytesIO(body), headers={**alice, **json_type})
    assert response.status == 413
    assert (await _envelope(response))["code"] == "body_too_large"
    response = await client.post("/auth/verify", data=io.BytesIO(body), headers=json_type)
    assert response.status == 413


async def test_oversized_headers_and_urls_are_refused_without_a_traceback(client: AppClient) -> None:
    """Headers or URLs past aiohttp's 8 KiB line limit get a plain 400 (before speccyd sees them), no 5xx."""
    for kwargs in ({"headers": {"X-Big": "a" * 100_000}}, {"headers": {f"X-{i}": "a" for i in range(300)}}):
        response = await client.get("/healthz", **kwargs)  # type: ignore[arg-type]
        assert response.status == 400
        assert "Traceback" not in await response.text()
    response = await client.get("/healthz?" + "a" * 100_000)
    assert response.status == 400


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


def test_secrets_and_data_dir_permissions(settings: Settings) -> None:
    """The data dir, secrets dir and audio dir are 0700; key files, config and database are 0600."""
    from speccyd.datadir import init_data_dir

    init_data_dir(settings)
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
    server = ServerProcess(data_dir, upstream_url, tmp_path / "server.log", env={"SPECCY_LOG_LEVEL": "debug"})
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
    await server.kill(signal.SIGTERM)
    log = server.log_path.read_bytes()
    assert b"listening on" in log and b"/tts/generate" in log  # the log did record the run
    stored = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "speccyd.db" for p in stored)
    for secret in secrets:
        needle = secret.encode()
        assert needle not in log, f"secret in the log: {secret[:12]}..."
        for path in stored:
            assert needle not in path.read_bytes(), f"secret in {path}"


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
    assert failed["error"] == "upstream error 401: Incorrect API key provided: sk-[redacted] Find yours at ..."
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert b"0123456789abcdef" not in path.read_bytes(), path
