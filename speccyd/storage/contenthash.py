"""The content hash: what makes two speech requests "the same" (one row per user and hash), apps included.

Version 2 hashes a version tag and then each field as a netstring (`<length of its UTF-8 bytes>:<bytes>,`),
so every request has exactly one encoding and no two different requests share one, whatever newlines or
digits their fields hold. Version 1 joined the fields with newlines: instructions "a\\nb" with text "c" and
instructions "a" with text "b\\nc" were the same request to it. README ("The content hash") documents the
encoding with test vectors, for apps that compute it offline.

It lives in storage because it is the database's deduplication key: migration 5 re-hashes every stored row
with `content_hash_v2`, which therefore never changes; a version 3 would be a new function and a new migration.
"""

from __future__ import annotations

import hashlib

CONTENT_HASH_VERSION = 2
_V2_TAG = b"speccyd content hash v2\n"


def content_hash_v2(model: str, voice: str, fmt: str, speed: float, instructions: str | None, text: str) -> str:
    """Lowercase hex SHA-256 of the v2 tag and the six fields as netstrings (speed with two decimals, no
    instructions as the empty string)."""
    digest = hashlib.sha256(_V2_TAG)
    for field in (model, voice, fmt, f"{speed:.2f}", instructions or "", text):
        data = field.encode("utf-8")
        digest.update(b"%d:%s," % (len(data), data))
    return digest.hexdigest()
