"""Session tokens: HS256 JWTs, issued at sign-in and verified on every authenticated request."""

from __future__ import annotations

import time
from typing import Any

import jwt

from speccyd.crypto import ServerSecrets
from speccyd.errors import ApiError

_ALGORITHM = "HS256"  # pinned on verify: a token naming any other algorithm (or "none") is refused
# Verified tokens remembered per process; checking a JWT costs ~60 µs, a lookup here ~1 µs.
_MAX_VERIFIED = 10_000


class Sessions:
    def __init__(self, secrets: ServerSecrets) -> None:
        self._key = secrets.jwt_key
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (user id, expiry)

    def issue(self, user_id: str, ttl: float) -> tuple[str, int]:
        now = int(time.time())
        expires = now + int(ttl)
        token = jwt.encode({"sub": user_id, "iat": now, "exp": expires}, self._key, algorithm=_ALGORITHM)
        return token, expires

    def verify(self, token: str) -> str:
        """The user id of a valid session token; anything else is a 401."""
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known[0]
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=[_ALGORITHM], options={"require": ["sub", "iat", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "session_expired", "session token has expired; sign in again") from None
        except jwt.PyJWTError:
            raise ApiError(401, "invalid_session", "session token is not valid") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise ApiError(401, "invalid_session", "session token is not valid")
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        # The signing key never changes while the process runs (rotation needs a restart), so a token that
        # verified once stays valid until its expiry, which is checked on every use above.
        self._verified[token] = (subject, float(claims["exp"]))
        return subject
