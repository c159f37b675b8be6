"""Sessions (JWT) and signed file URLs: who is asking."""

from __future__ import annotations

import time
from typing import Any

import jwt
from aiohttp import web

from speccyd.crypto import ServerSecrets
from speccyd.errors import ApiError
from speccyd.keys import REVOCATIONS, SECRETS

_ALGORITHM = "HS256"  # pinned on verify: a token naming any other algorithm (or "none") is refused


def issue_session(secrets: ServerSecrets, user_id: str, ttl: float) -> tuple[str, int]:
    # iat keeps its fraction of a second: a revoke ends tokens issued before it, and a sign-in a moment
    # after the revoke (same second) must still count (RFC 7519 NumericDate allows non-integer values).
    now = time.time()
    expires = int(now) + int(ttl)
    token = jwt.encode({"sub": user_id, "iat": now, "exp": expires}, secrets.jwt_key, algorithm=_ALGORITHM)
    return token, expires


def verify_session(secrets: ServerSecrets, token: str) -> str:
    """The user id of a valid session token; anything else is a 401."""
    return session_claims(secrets, token)[0]


def session_claims(secrets: ServerSecrets, token: str) -> tuple[str, float]:
    """(user id, issued at) of a validly signed, unexpired session token; anything else is a 401."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secrets.jwt_key, algorithms=[_ALGORITHM], options={"require": ["sub", "iat", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "session_expired", "session token has expired; sign in again") from None
    except jwt.PyJWTError:
        raise ApiError(401, "invalid_session", "session token is not valid") from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise ApiError(401, "invalid_session", "session token is not valid")
    issued_at = claims["iat"]
    if isinstance(issued_at, bool) or not isinstance(issued_at, int | float):
        raise ApiError(401, "invalid_session", "session token is not valid")
    return subject, float(issued_at)


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
    user_id, issued_at = session_claims(request.app[SECRETS], token)
    if request.app[REVOCATIONS].is_revoked(user_id, issued_at):
        raise ApiError(401, "session_revoked", "this session was ended by the server's owner; sign in again")
    return user_id


def signed_file_url(request: web.Request, file_id: str, user_id: str, expires_at: float) -> str:
    # The URL lives as long as the audio is promised to; a later cache hit hands out a longer one.
    expires = int(expires_at)
    sig = request.app[SECRETS].sign_file_url(file_id, user_id, expires)
    return f"/files/{file_id}?exp={expires}&sig={sig}"
