"""A small speccyd client for terminals and scripts: sign in, generate, wait, download.

It speaks only the public HTTP API (the same one the apps use), so `speccyd say` is a quick end-to-end
check of a server from any machine that can reach it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from speccyd.config.text import describe

# Polling starts fast (a cache hit or short text is ready in well under a second) and backs off to 1s.
_POLL_FIRST, _POLL_MAX = 0.1, 1.0
_CHUNK = 64 * 1024


class ClientError(Exception):
    """The server refused or failed; the message is the server's own explanation."""


class LocalFileError(Exception):
    """The audio arrived but cannot be saved here (a local problem, not the server's)."""


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (aiohttp.ContentTypeError, ValueError):
        body = None
    if response.status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        what = f"{response.method} {response.url.path}"
        raise ClientError(f"{what}: HTTP {response.status}: {message or response.reason}")
    if not isinstance(body, dict):
        raise ClientError(f"{response.method} {response.url.path}: the server did not answer with JSON")
    return body


class SpeccyClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._headers: dict[str, str] = {}

    async def sign_in(self, openai_key: str) -> str:
        async with self._session.post(f"{self.base_url}/auth/verify", json={"openai_token": openai_key}) as r:
            body = await _json(r)
        self._headers = {"Authorization": f"Bearer {body['session_token']}"}
        return str(body["user_id"])

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._session.post(f"{self.base_url}/tts/generate", json=request, headers=self._headers) as r:
            return await _json(r)

    async def status(self, content_hash: str) -> dict[str, Any]:
        async with self._session.get(f"{self.base_url}/tts/{content_hash}/status", headers=self._headers) as r:
            return await _json(r)

    async def wait_ready(
        self, file: dict[str, Any], limit: float, on_wait: Callable[[float], None] | None = None
    ) -> dict[str, Any]:
        started = time.monotonic()
        delay = _POLL_FIRST
        while file["status"] == "generating":
            waited = time.monotonic() - started
            if waited > limit:
                raise ClientError(f"the audio was not ready after {limit:.0f}s")
            if on_wait is not None:
                on_wait(waited)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX)
            file = await self.status(file["content_hash"])
        if file["status"] == "failed":
            raise ClientError(f"generation failed: {file.get('error', 'unknown error')}")
        return file

    async def download(
        self, file: dict[str, Any], dest: Path, on_bytes: Callable[[int, int | None], None] | None = None
    ) -> int:
        """Save the audio to `dest` through a temp file, so a failed download never leaves half a file."""
        temp = dest.with_name(f".{dest.name}.part")
        size = 0
        async with self._session.get(f"{self.base_url}{file['url']}") as r:
            if r.status != 200:
                await _json(r)
                raise ClientError(f"download answered HTTP {r.status}")
            total = r.content_length
            try:
                try:
                    out = temp.open("wb")
                except OSError as e:
                    raise LocalFileError(f"cannot save the audio to {dest}: {describe(e)}") from None
                with out:
                    async for chunk in r.content.iter_chunked(_CHUNK):
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise LocalFileError(f"cannot save the audio to {dest}: {describe(e)}") from None
                        size += len(chunk)
                        if on_bytes is not None:
                            on_bytes(size, total)
                try:
                    os.replace(temp, dest)
                except OSError as e:
                    raise LocalFileError(f"cannot save the audio to {dest}: {describe(e)}") from None
            finally:
                temp.unlink(missing_ok=True)
        return size
