"""Session tokens: HS256 JWTs, issued at sign-in and verified on every authenticated request."""

from __future__ import annotations

import time
from typing import Any

import jwt

from speccyd.security.crypto import ServerSecrets
from speccyd.web.errors import ApiError

_ALGORITHM = "HS256"  # pinned on verify: a token naming any other algorithm (or "none") is refused
# Verified tokens remembered per process; checking a JWT costs ~60 µs, a lookup here ~1 µs.
_MAX_VERIFIED = 10_000


class Sessions:
    def __init__(self, secrets: ServerSecrets) -> None:
        self._key = secrets.jwt_key
        self._verified: dict[str, tuple[str, float, float]] = {}  # token -> (user id, expiry, issued at)

    def issue(self, user_id: str, ttl: float) -> tuple[str, int]:
        # iat keeps its fraction of a second: a revoke ends tokens issued before it, and a sign-in a moment
        # after the revoke (same second) must still count (RFC 7519 NumericDate allows non-integer values).
        now = time.time()
        expires = int(now) + int(ttl)
        token = jwt.encode({"sub": user_id, "iat": now, "exp": expires}, self._key, algorithm=_ALGORITHM)
        return token, expires

    def verify(self, token: str) -> str:
        """The user id of a valid session token; anything else is a 401."""
        return self.verify_claims(token)[0]

    def verify_claims(self, token: str) -> tuple[str, float]:
        """(user id, issued at) of a valid session token; anything else is a 401."""
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known[0], known[2]
        # A header byte past ASCII arrives as a surrogate escape, which PyJWT cannot encode: it raised a
        # UnicodeEncodeError (a 500 and a traceback per request) on every authenticated endpoint.
        if not token.isascii():
            raise ApiError(401, "invalid_session", "session token is not valid")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=[_ALGORITHM], options={"require": ["sub", "iat", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "session_expired", "session token has expired; sign in again") from None
        except jwt.PyJWTError:
            raise ApiError(401, "invalid_session", "session token is not valid") from None
        subject = claims["sub"]
        issued_at = claims["iat"]
        valid_iat = isinstance(issued_at, int | float) and not isinstance(issued_at, bool)
        if not isinstance(subject, str) or not subject or not valid_iat:
            raise ApiError(401, "invalid_session", "session token is not valid")
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        # The signing key never changes while the process runs (rotation needs a restart), so a token that
        # verified once stays valid until its expiry, which is checked on every use above.
        self._verified[token] = (subject, float(claims["exp"]), float(issued_at))
        return subject, float(issued_at)
