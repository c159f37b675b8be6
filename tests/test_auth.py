"""POST /auth/verify and session tokens."""

from __future__ import annotations

import base64
import json
import time
import warnings

import jwt

from speccyd.security.crypto import ServerSecrets
from tests.conftest import AppClient, sign_in
from tests.fake_upstream import FakeUpstream


async def _verify(client: AppClient, key: object) -> tuple[int, dict[str, object]]:
    response = await client.post("/auth/verify", json={"openai_token": key})
    return response.status, await response.json()


async def test_valid_key_gets_user_and_session(client: AppClient, fake: FakeUpstream) -> None:
    """A key the upstream accepts yields a user id, a session token and its expiry."""
    status, body = await _verify(client, "sk-test-alice")
    assert status == 200
    assert set(body) == {"user_id", "session_token", "expires_at"}
    assert [c.path for c in fake.calls] == ["/v1/models"]
    assert fake.calls[0].api_key == "sk-test-alice"


async def test_same_key_same_user_id(client: AppClient) -> None:
    """The same key from any device gives the same user id; another key another id."""
    _, first = await _verify(client, "sk-test-alice")
    _, second = await _verify(client, "sk-test-alice")
    _, other = await _verify(client, "sk-test-bob")
    assert first["user_id"] == second["user_id"]
    assert other["user_id"] != first["user_id"]


async def test_rejected_key_is_401(client: AppClient) -> None:
    """A key the upstream refuses is a 401 with a stable code."""
    status, body = await _verify(client, "sk-wrong")
    assert status == 401
    assert body == {"error": {"code": "invalid_openai_token", "message": "the upstream rejected this API key"}}


async def test_unreachable_upstream_is_502(make_client: object) -> None:
    """When the upstream cannot be reached the answer is 502 with a clear message."""
    client = await make_client(openai_base_url="http://127.0.0.1:9/v1")  # type: ignore[operator]
    status, body = await _verify(client, "sk-test-alice")
    assert status == 502
    assert body["error"]["code"] == "upstream_unavailable"  # type: ignore[index]
    assert "connection" in body["error"]["message"]  # type: ignore[index]


async def test_upstream_server_error_on_verify_is_502(client: AppClient, fake: FakeUpstream) -> None:
    """An upstream 500 while checking a key is a 502, not a rejection."""
    fake.models_status = 500
    status, body = await _verify(client, "sk-test-alice")
    assert status == 502
    assert body["error"]["code"] == "upstream_unavailable"  # type: ignore[index]


async def test_malformed_token_values_are_400(client: AppClient, fake: FakeUpstream) -> None:
    """Missing, empty, non-string and absurdly long keys are refused without asking the upstream."""
    for value in (None, "", "   ", 42, ["sk-test-x"], "sk-test-" + "x" * 600, "sk-test-\nx"):
        status, body = await _verify(client, value)
        assert status == 400, value
        assert body["error"]["code"] == "invalid_openai_token"  # type: ignore[index]
    assert fake.calls == []


async def test_failed_sign_ins_are_rate_limited_per_address(make_client: object) -> None:
    """After `auth_rate_limit` failures a client address gets 429 with Retry-After, even for a good key."""
    client = await make_client(auth_rate_limit=3)  # type: ignore[operator]
    for _ in range(3):
        assert (await _verify(client, "sk-wrong"))[0] == 401
    response = await client.post("/auth/verify", json={"openai_token": "sk-test-alice"})
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["code"] == "too_many_failed_sign_ins"


async def test_successful_sign_ins_are_not_rate_limited(make_client: object) -> None:
    """Only failures count toward the sign-in limit."""
    client = await make_client(auth_rate_limit=2)  # type: ignore[operator]
    for _ in range(5):
        assert (await _verify(client, "sk-test-alice"))[0] == 200


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs512(claims: dict[str, object], key: bytes) -> str:
    with warnings.catch_warnings():  # PyJWT warns that 32 bytes is short for HS512; that is the point here
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key, algorithm="HS512")


async def test_forged_tokens_are_401(client: AppClient, settings: object) -> None:
    """alg none, wrong key, tampered payload, expired, missing claims and garbage all get 401."""
    headers = await sign_in(client)
    good = headers["Authorization"].split()[1]
    secrets = ServerSecrets.load(settings.secrets_dir)  # type: ignore[attr-defined]
    user_id = jwt.decode(good, options={"verify_signature": False})["sub"]
    now = int(time.time())
    header, payload, signature = good.split(".")
    forged = {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "wrong_key": jwt.encode({"sub": user_id, "iat": now, "exp": now + 60}, b"x" * 32, algorithm="HS256"),
        "other_server": jwt.encode(
            {"sub": user_id, "iat": now, "exp": now + 60}, ServerSecrets.generate().jwt_key, algorithm="HS256"
        ),
        "tampered": f"{header}.{_b64({'sub': 'someone-else', 'iat': now, 'exp': now + 60})}.{signature}",
        "expired": jwt.encode({"sub": user_id, "iat": now - 100, "exp": now - 10}, secrets.jwt_key, algorithm="HS256"),
        "no_exp": jwt.encode({"sub": user_id, "iat": now}, secrets.jwt_key, algorithm="HS256"),
        "hs512": _hs512({"sub": user_id, "iat": now, "exp": now + 60}, secrets.jwt_key),
        "garbage": "not-a-token",
    }
    for name, token in forged.items():
        response = await client.get("/user/usage", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401, name
        body = await response.json()
        assert body["error"]["code"] in {"invalid_session", "session_expired"}, name
    assert (await client.get("/user/usage", headers=headers)).status == 200


async def test_missing_or_odd_authorization_is_401(client: AppClient) -> None:
    """No header, a non-Bearer scheme or an empty token are 401 with the JSON envelope."""
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
        response = await client.get("/user/usage", headers=headers)
        assert response.status == 401, headers
        assert "code" in (await response.json())["error"]


async def test_key_is_never_stored_in_plaintext(client: AppClient, settings: object) -> None:
    """The OpenAI key appears nowhere in the data dir, not even in the database's pages."""
    await sign_in(client, "sk-test-secret-needle")
    for path in settings.data_dir.rglob("*"):  # type: ignore[attr-defined]
        if path.is_file():
            assert b"sk-test-secret-needle" not in path.read_bytes(), path
