"""Sessions (JWT) and signed file URLs: who is asking."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from speccyd.appkeys import AUTH_FAILURE_LIMIT, KEY_CACHE, REVOCATIONS, SECRETS, SESSIONS, STORE, UPSTREAM
from speccyd.generation.upstream import KeyRejected, UpstreamError
from speccyd.web.errors import ApiError

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 512  # real keys are ~200 characters; anything far longer is not a key


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "invalid_authorization", "Authorization must be 'Bearer <session token>'")
    return token.strip()


def session_user(request: web.Request, token: str) -> str:
    """The user of a valid session token that the owner has not revoked."""
    user_id, issued_at = request.app[SESSIONS].verify_claims(token)
    if request.app[REVOCATIONS].is_revoked(user_id, issued_at):
        raise ApiError(401, "session_revoked", "this session was ended by the server's owner; sign in again")
    return user_id


def require_user(request: web.Request) -> str:
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <session token>")
    return session_user(request, token)


async def sign_in_with_key(request: web.Request, key: object) -> str:
    """Check an OpenAI key with the upstream and return its user, created on first sight.

    Failed attempts count against the client's address, so keys cannot be guessed through any endpoint
    that accepts one. A key the upstream accepted is remembered for `key_cache_ttl`.
    """
    limiter = request.app[AUTH_FAILURE_LIMIT]
    client = request.remote or "unknown"
    wait = limiter.retry_after(client)
    if wait:
        raise ApiError(
            429,
            "too_many_failed_sign_ins",
            f"too many failed sign-ins; try again in {wait}s",
            {"Retry-After": str(wait)},
        )
    # ASCII only: keys are, and the key travels in an HTTP header, where anything else cannot be encoded.
    if (
        not isinstance(key, str)
        or not key.strip()
        or len(key) > MAX_KEY_CHARS
        or not key.isascii()
        or not key.isprintable()
    ):
        limiter.take(client)
        raise ApiError(400, "invalid_openai_token", "openai_token must be an OpenAI API key string")
    key = key.strip()

    try:
        await request.app[UPSTREAM].check_key(key)
    except KeyRejected:
        limiter.take(client)
        log.info("sign-in refused by the upstream for %s", client)
        raise ApiError(401, "invalid_openai_token", "the upstream rejected this API key") from None
    except UpstreamError as e:
        raise ApiError(502, "upstream_unavailable", f"cannot check the key with the upstream: {e.message}") from None

    secrets = request.app[SECRETS]
    store = request.app[STORE]
    lookup = secrets.key_lookup_hash(key)
    user_id = await store.run(store.upsert_user, lookup, lambda uid: secrets.encrypt_key(key, uid), time.time())
    request.app[KEY_CACHE].put(lookup, user_id)
    return user_id


async def require_user_or_key(request: web.Request) -> str:
    """The user behind `Bearer <session token>` or `Bearer <OpenAI key>` (for OpenAI-style clients)."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <OpenAI API key or session token>")
    if token.count(".") == 2:  # a JWT has three dot-separated parts; OpenAI keys have no dots
        return session_user(request, token)
    if len(token) <= MAX_KEY_CHARS and token.isprintable():
        cached = request.app[KEY_CACHE].get(request.app[SECRETS].key_lookup_hash(token))
        if cached is not None:
            return cached
    try:
        return await sign_in_with_key(request, token)
    except ApiError as e:
        if e.code == "invalid_openai_token" and e.status == 400:
            raise ApiError(401, "invalid_api_key", "Authorization does not hold a usable API key") from None
        raise


def signed_file_url(request: web.Request, file_id: str, user_id: str, expires_at: float) -> str:
    # The URL lives as long as the audio is promised to; a later cache hit hands out a longer one.
    expires = int(expires_at)
    sig = request.app[SECRETS].sign_file_url(file_id, user_id, expires)
    return f"/files/{file_id}?exp={expires}&sig={sig}"
