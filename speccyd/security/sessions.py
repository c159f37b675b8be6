"""Session tokens: HS256 JWTs, issued at sign-in and verified on every authenticated request."""

from __future__ import annotations

from typing import Any

import jwt

from speccyd.config.clock import Clock
from speccyd.security.crypto import ServerSecrets
from speccyd.security.errors import InvalidSession, SessionExpired, SessionRevoked
from speccyd.security.revocations import Revocations

_ALGORITHM = "HS256"  # pinned on verify: a token naming any other algorithm (or "none") is refused
# Verified tokens remembered per process; checking a JWT costs ~60 µs, a lookup here ~1 µs.
_MAX_VERIFIED = 10_000


class Sessions:
    def __init__(self, secrets: ServerSecrets, revocations: Revocations, clock: Clock) -> None:
        self._key = secrets.jwt_key
        self._revocations = revocations
        self._clock = clock
        self._verified: dict[str, tuple[str, float, float]] = {}  # token -> (user id, expiry, issued at)

    def issue(self, user_id: str, ttl: float) -> tuple[str, int]:
        # iat keeps its fraction of a second: a revoke ends tokens issued before it, and a sign-in a moment
        # after the revoke (same second) must still count (RFC 7519 NumericDate allows non-integer values).
        now = self._clock.now()
        expires = int(now) + int(ttl)
        token = jwt.encode({"sub": user_id, "iat": now, "exp": expires}, self._key, algorithm=_ALGORITHM)
        return token, expires

    def user(self, token: str) -> str:
        """The user of a valid session token that the owner has not revoked."""
        user_id, issued_at = self._claims(token)
        if self._revocations.is_revoked(user_id, issued_at):
            raise SessionRevoked("this session was ended by the server's owner; sign in again")
        return user_id

    def _claims(self, token: str) -> tuple[str, float]:
        """(user id, issued at) of a valid, unexpired session token."""
        known = self._verified.get(token)
        if known is None:
            known = self._decode(token)
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
            # The signing key never changes while the process runs (rotation needs a restart), so a token
            # that verified once stays valid until its expiry, which is checked on every use below.
            self._verified[token] = known
        subject, expires, issued_at = known
        if expires <= self._clock.now():
            raise SessionExpired("session token has expired; sign in again")
        return subject, issued_at

    def _decode(self, token: str) -> tuple[str, float, float]:
        # A header byte past ASCII arrives as a surrogate escape, which PyJWT cannot encode: it raised a
        # UnicodeEncodeError (a 500 and a traceback per request) on every authenticated endpoint.
        if not token.isascii():
            raise InvalidSession()
        try:
            # Expiry is checked against our clock, not PyJWT's (tests move time instead of sleeping).
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                options={"require": ["sub", "iat", "exp"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise InvalidSession() from None
        subject, issued_at, expires = claims["sub"], claims["iat"], claims["exp"]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (issued_at, expires))
        if not isinstance(subject, str) or not subject or not numbers:
            raise InvalidSession()
        return subject, float(expires), float(issued_at)
