"""The OpenAI-compatible upstream, through the official SDK, with its failures sorted into kinds."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

import openai

from speccyd.generation.errors import UpstreamUnavailable

try:  # the SDK's HTTP library; raised as is while a streamed body is being read
    import httpx2 as _httpx  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - older SDKs
    import httpx as _httpx  # type: ignore[import-not-found,no-redef,unused-ignore]

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (_httpx.HTTPError, _httpx.StreamError, OSError)

# Upstream answers that say "try again": rate limited, timeout, conflict, server trouble.
_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# A 429 with this code means the account is out of credit: waiting will not help.
_FATAL_429_CODES = {"insufficient_quota"}
_MAX_RETRY_AFTER = 300.0


class UpstreamError(Exception):
    """One failed upstream call: whether to retry it, and the failure code it leaves if not retried."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code  # one of generation.errors.FAILURE_CODES
        self.status = status
        self.retry_after = retry_after


# OpenAI's 401 says "Incorrect API key provided: sk-proj-****abcd"; the message is stored and shown to the
# user, so whatever key-like string the upstream echoes is cut out first.
_KEY_IN_MESSAGE = re.compile(r"sk-[A-Za-z0-9_\-*.]{3,}")


def redact_key(message: str, api_key: str | None) -> str:
    """The message without the exact key speccyd sent (whatever its shape: other OpenAI-compatible servers
    use other prefixes), nor anything that looks like an OpenAI key."""
    if api_key:
        message = message.replace(api_key, "[redacted]")
    return _KEY_IN_MESSAGE.sub("sk-[redacted]", message)


def _upstream_message(e: openai.APIStatusError, api_key: str | None) -> str:
    body: Any = e.body
    message = f"upstream answered HTTP {e.status_code}"
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = str(inner["message"])
        elif isinstance(body.get("message"), str):
            message = str(body["message"])
    return redact_key(message, api_key)


def _retry_after(e: openai.APIStatusError) -> float | None:
    value = e.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date; fall back to our own backoff
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def classify(e: BaseException, api_key: str | None = None) -> UpstreamError:
    """Turn any failure of an upstream call made with `api_key` into an UpstreamError that says whether to
    retry; the key is cut out of whatever the upstream said."""
    if isinstance(e, UpstreamError):
        return e
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        message = _upstream_message(e, api_key)
        body: Any = e.body
        code = body.get("code") if isinstance(body, dict) else None
        retryable = status in _RETRYABLE_STATUS and code not in _FATAL_429_CODES
        return UpstreamError(
            f"upstream error {status}: {message}",
            retryable=retryable,
            code="upstream_failed" if retryable else "upstream_refused",
            status=status,
            retry_after=_retry_after(e),
        )
    # A stalled body raises the HTTP library's own timeout, not the SDK's; both mean the same to a user.
    if isinstance(e, openai.APITimeoutError | _httpx.TimeoutException):
        return UpstreamError("upstream timed out", retryable=True, code="upstream_timeout")
    if isinstance(e, (openai.APIConnectionError, *_TRANSPORT_ERRORS)):
        return UpstreamError(
            f"upstream connection failed: {type(e).__name__}", retryable=True, code="upstream_unreachable"
        )
    raise e


class Upstream:
    def __init__(self, base_url: str, timeout: float) -> None:
        # Retries are ours (bounded, Retry-After aware, slot released while waiting), so the SDK's are off.
        # A float timeout bounds each connect, write and read: a stalled stream fails after `timeout`.
        self._client = openai.AsyncOpenAI(api_key="unset", base_url=base_url, max_retries=0, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()

    async def check_key(self, api_key: str) -> bool:
        """Whether the upstream accepts this key (401/403: no); UpstreamUnavailable when it cannot say."""
        try:
            await self._client.with_options(api_key=api_key).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            return False
        except Exception as e:
            message = classify(e, api_key).message
            raise UpstreamUnavailable(f"cannot check the key with the upstream: {message}") from None
        return True

    async def speech(
        self,
        api_key: str,
        *,
        text: str,
        model: str,
        voice: str,
        fmt: str,
        speed: float,
        instructions: str | None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the audio as the upstream sends it; every failure is raised as UpstreamError."""
        # A dict keeps "instructions" out of the request entirely when unset (tts-1 refuses it).
        params: dict[str, Any] = {"input": text, "model": model, "voice": voice, "response_format": fmt, "speed": speed}
        if instructions:
            params["instructions"] = instructions
        client = self._client.with_options(api_key=api_key)
        try:
            async with client.audio.speech.with_streaming_response.create(
                **params,
            ) as response:
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type.startswith(("text/", "application/json")):
                    raise UpstreamError(
                        f"upstream sent {content_type} instead of audio", retryable=False, code="upstream_bad_audio"
                    )
                async for chunk in response.iter_bytes():
                    if chunk:
                        yield chunk
        except UpstreamError:
            raise
        except Exception as e:
            raise classify(e, api_key) from None
