from __future__ import annotations

import logging
import time

from aiohttp import web

from speccyd.auth import issue_session
from speccyd.errors import ApiError
from speccyd.keys import AUTH_FAILURE_LIMIT, SECRETS, SETTINGS, STORE, UPSTREAM
from speccyd.routes.common import json_body
from speccyd.timeutil import iso
from speccyd.upstream import KeyRejected, UpstreamError

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_KEY_CHARS = 512  # real keys are ~200 characters; anything far longer is not a key


@routes.post("/auth/verify")
async def verify(request: web.Request) -> web.Response:
    """Check an OpenAI key with the upstream and trade it for a session token."""
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
    body = await json_body(request)
    key = body.get("openai_token")
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
    user_id = await store.run(
        store.upsert_user,
        secrets.key_lookup_hash(key),
        lambda uid: secrets.encrypt_key(key, uid),
        time.time(),
    )
    token, expires = issue_session(secrets, user_id, request.app[SETTINGS].session_ttl)
    return web.json_response({"user_id": user_id, "session_token": token, "expires_at": iso(expires)})
