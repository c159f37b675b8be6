"""Who may not do what, as domain exceptions: `web/errors.py` gives each its status and stable code.

Each carries the sentence the client is shown; those with a wait carry it in `retry_after` (seconds).
"""

from __future__ import annotations


class NotSignedIn(Exception):
    """No credentials at all."""


class BadAuthorization(Exception):
    """An Authorization header that is not `Bearer <token>`."""


class InvalidSession(Exception):
    """A session token that is forged, tampered with, malformed or from another server."""

    def __init__(self, message: str = "session token is not valid") -> None:
        super().__init__(message)


class SessionExpired(Exception):
    """A session token past its expiry."""


class SessionRevoked(Exception):
    """A session the server's owner ended (`speccyd users revoke`)."""


class InvalidSignature(Exception):
    """A signed file URL whose signature or expiry does not check out."""


class SignatureExpired(Exception):
    """A signed file URL past its expiry."""


class InvalidKey(Exception):
    """What was sent as an OpenAI key cannot be one (empty, too long, not printable ASCII)."""


class KeyRejected(Exception):
    """The upstream refused this API key."""


class TooManyFailedSignIns(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after}s")
        self.retry_after = retry_after


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; try again in {retry_after}s")
        self.retry_after = retry_after
