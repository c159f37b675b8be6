"""Sessions (JWT) and signed file URLs: who is asking."""

from __future__ import annotations

from aiohttp import web

from speccyd.errors import ApiError
from speccyd.keys import SECRETS, SESSIONS


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "invalid_authorization", "Authorization must be 'Bearer <session token>'")
    return token.strip()


def require_user(request: web.Request) -> str:
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <session token>")
    return request.app[SESSIONS].verify(token)


def signed_file_url(request: web.Request, file_id: str, user_id: str, expires_at: float) -> str:
    # The URL lives as long as the audio is promised to; a later cache hit hands out a longer one.
    expires = int(expires_at)
    sig = request.app[SECRETS].sign_file_url(file_id, user_id, expires)
    return f"/files/{file_id}?exp={expires}&sig={sig}"
