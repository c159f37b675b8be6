"""Signing in with an OpenAI key: checked with the upstream once, then the same key is the same user.

No HTTP request in here: the handler passes the key and the client's address, and gets a user id or a
domain exception (security/errors.py). Failed attempts count against the client's address, so keys cannot
be guessed through any endpoint that accepts one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from speccyd.config.clock import Clock
from speccyd.security.crypto import ServerSecrets
from speccyd.security.errors import InvalidKey, KeyRejected, TooManyFailedSignIns
from speccyd.security.keycache import KeyCache
from speccyd.security.ratelimit import RateLimiter
from speccyd.storage.database import Database

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 512  # real keys are ~200 characters; anything far longer is not a key
# Asks the upstream whether it accepts a key: True or False, or raises when it cannot tell.
KeyCheck = Callable[[str], Awaitable[bool]]


def _looks_like_key(key: object) -> bool:
    # ASCII only: keys are, and the key travels in an HTTP header, where anything else cannot be encoded.
    return (
        isinstance(key, str) and bool(key.strip()) and len(key) <= MAX_KEY_CHARS and key.isascii() and key.isprintable()
    )


class SignIn:
    def __init__(
        self,
        db: Database,
        secrets: ServerSecrets,
        check_key: KeyCheck,
        failures: RateLimiter,
        key_cache: KeyCache,
        clock: Clock,
    ) -> None:
        self._db = db
        self._secrets = secrets
        self._check_key = check_key
        self.failures = failures  # reconfigured on SIGHUP
        self._key_cache = key_cache
        self._clock = clock

    async def sign_in(self, key: object, client: str) -> str:
        """The user who owns `key`, created on first sight; a key the upstream accepted is remembered."""
        wait = self.failures.retry_after(client)
        if wait:
            raise TooManyFailedSignIns(wait)
        if not isinstance(key, str) or not _looks_like_key(key):
            self.failures.take(client)
            raise InvalidKey("openai_token must be an OpenAI API key string")
        key = key.strip()
        if not await self._check_key(key):
            self.failures.take(client)
            log.info("sign-in refused by the upstream for %s", client)
            raise KeyRejected("the upstream rejected this API key")
        secrets = self._secrets
        lookup = secrets.key_lookup_hash(key)
        user_id = await self._db.upsert_user(lookup, lambda uid: secrets.encrypt_key(key, uid), self._clock.now())
        self._key_cache.put(lookup, user_id)
        return user_id

    async def user_for_key(self, key: str, client: str) -> str:
        """The user behind an OpenAI key sent with every request (/v1 clients): cached for `key_cache_ttl`."""
        if _looks_like_key(key):
            cached = self._key_cache.get(self._secrets.key_lookup_hash(key))
            if cached is not None:
                return cached
        try:
            return await self.sign_in(key, client)
        except InvalidKey:
            raise KeyRejected("Authorization does not hold a usable API key") from None
