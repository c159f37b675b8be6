"""Who is asking: the session (or OpenAI key) in the Authorization header, and signed file URLs."""

from __future__ import annotations

from aiohttp import web

from speccyd.appkeys import CLOCK, SECRETS, SESSIONS, SIGN_IN
from speccyd.security.errors import BadAuthorization, InvalidSignature, NotSignedIn, SignatureExpired


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadAuthorization("Authorization must be 'Bearer <session token>'")
    return token.strip()


def require_user(request: web.Request) -> str:
    token = bearer_token(request)
    if token is None:
        raise NotSignedIn("missing Authorization: Bearer <session token>")
    return request.app[SESSIONS].user(token)


async def require_user_or_key(request: web.Request) -> str:
    """The user behind `Bearer <session token>` or `Bearer <OpenAI key>` (for OpenAI-style clients)."""
    token = bearer_token(request)
    if token is None:
        raise NotSignedIn("missing Authorization: Bearer <OpenAI API key or session token>")
    if token.count(".") == 2:  # a JWT has three dot-separated parts; OpenAI keys have no dots
        return request.app[SESSIONS].user(token)
    return await request.app[SIGN_IN].user_for_key(token, request.remote or "unknown")


def signed_file_url(request: web.Request, file_id: str, user_id: str, expires_at: float) -> str:
    # The URL lives as long as the audio is promised to; a later cache hit hands out a longer one.
    expires = int(expires_at)
    sig = request.app[SECRETS].sign_file_url(file_id, user_id, expires)
    return f"/files/{file_id}?exp={expires}&sig={sig}"


def signed_playlist_url(request: web.Request, file_id: str, user_id: str, expires_at: float) -> str:
    """The file's HLS playlist, signed like its `url` (the same signature opens every resource of the file)."""
    expires = int(expires_at)
    sig = request.app[SECRETS].sign_file_url(file_id, user_id, expires)
    return f"/files/{file_id}/playlist.m3u8?exp={expires}&sig={sig}"


def signed_url_expiry(request: web.Request) -> int:
    """The expiry of a signed file URL, refused when missing or past."""
    raw = request.query.get("exp", "")
    # ASCII digits only: int() also reads Arabic-Indic and full-width digits, "1_000", "+5" and " 5 ", none
    # of which we sign.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise InvalidSignature("file URL has no valid expiry")
    expires = int(raw)
    if expires < request.app[CLOCK].now():
        raise SignatureExpired("file URL has expired; ask for a new one")
    return expires


def check_signature(request: web.Request, file_id: str, user_id: str, expires: int) -> None:
    """Refuse a file URL whose signature does not name this file, its owner and this expiry."""
    if not request.app[SECRETS].check_file_url(file_id, user_id, expires, request.query.get("sig", "")):
        raise InvalidSignature("file URL signature is not valid")
