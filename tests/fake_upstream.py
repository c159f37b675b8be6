"""A fake OpenAI-compatible upstream: a small aiohttp app with explicit fault switches and a request log.

speccyd talks to it through the real openai SDK over HTTP on 127.0.0.1; nothing in speccyd is patched.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

GOOD_KEY_PREFIX = "sk-test-"
# Other OpenAI-compatible servers hand out keys of other shapes (LocalAI, vLLM, a proxy's own tokens).
OTHER_GOOD_KEY_PREFIX = "local-test-"


@dataclass
class Fault:
    """What the next speech request gets instead of audio.

    kind: "status" (HTTP `status` with an OpenAI error body, optional Retry-After), "reset" (connection
    dropped before any byte), "reset_mid" (dropped after half the audio), "cut" (Content-Length promises
    more than is sent), "empty" (200 with no body), "stall" (headers, then nothing), "stall_headers"
    (nothing at all, not even headers), "slow" (the audio one `chunk` bytes every `delay` seconds),
    "wrong_type" (200 text/html), "endless" (audio that never ends, `chunk` bytes at a time, as fast as
    speccyd reads), "pause_mid" (half the audio, then the rest once `pause` is set). A stall or an endless
    body lasts until speccyd hangs up, so no handler outlives a test.
    With `pause`, "reset_mid" also waits for it before dropping the connection. With `match`, the fault
    is kept for the first request whose input contains that text (a given chunk of a long text).
    """

    kind: str = "status"
    status: int = 500
    retry_after: str | None = None
    message: str = "fake upstream failure"
    code: str | None = None
    pause: asyncio.Event | None = None
    match: str | None = None
    delay: float = 0.2  # "slow": seconds between chunks
    chunk: int = 100  # "slow": bytes per chunk


async def _until_hung_up(request: web.Request) -> None:
    """Wait until the client closes the connection (how a stalled upstream looks from speccyd)."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.02)


# Real audio for join tests: the duration of each clip is picked from the request's input length.
CLIP_DURATIONS = (0.6, 0.9, 1.3)
CLIP_RATE = 24000  # what OpenAI sends: 24 kHz mono
_FFMPEG_OUTPUT = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "pcm": ["-c:a", "pcm_s16le", "-f", "s16le"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "opus": ["-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-f", "ogg"],
}


async def serve_fake(fake: FakeUpstream, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    """Serve `fake` on a free port outside pytest (benchmarks): its runner, to clean up, and its /v1 URL."""
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}/v1"


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def make_clips(directory: Path) -> dict[str, list[bytes]]:
    """Small real clips per format (a tone per duration in CLIP_DURATIONS), encoded by ffmpeg."""

    def encode(fmt: str, i: int) -> bytes:
        path = directory / f"clip{i}.{fmt}"
        source = f"sine=frequency={300 + 150 * i}:sample_rate={CLIP_RATE}:duration={CLIP_DURATIONS[i]}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", *_FFMPEG_OUTPUT[fmt], str(path)],
            check=True,
            timeout=60,
        )
        return path.read_bytes()

    jobs = [(fmt, i) for fmt in _FFMPEG_OUTPUT for i in range(len(CLIP_DURATIONS))]
    with ThreadPoolExecutor(max_workers=6) as pool:
        encoded = dict(zip(jobs, pool.map(lambda job: encode(*job), jobs), strict=True))
    return {fmt: [encoded[fmt, i] for i in range(len(CLIP_DURATIONS))] for fmt in _FFMPEG_OUTPUT}


@dataclass
class Call:
    path: str
    api_key: str | None
    body: dict[str, Any] | None
    clip: int | None = None  # which real clip was served, when serving real audio


@dataclass
class FakeUpstream:
    audio_size: int = 4000
    chunk_size: int = 1000
    latency: float = 0.0  # before the first byte of audio
    chunk_delay: float = 0.0  # between chunks
    revoked: set[str] = field(default_factory=set)
    models_status: int | None = None  # answer /models with this status instead
    echo_key: bool = False  # quote the caller's key in /models errors, as some servers quote it in theirs
    faults: deque[Fault] = field(default_factory=deque)
    refuse_all: Fault | None = None  # every speech request without a queued fault gets this one (kept)
    calls: list[Call] = field(default_factory=list)
    # While cleared, speech requests wait: a test holds a generation "in flight" as long as it needs.
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    # When set (format -> clips from make_clips), speech is real encoded audio instead of made-up bytes.
    clips: dict[str, list[bytes]] | None = None
    in_flight: int = 0  # speech requests being answered now
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def speech_calls(self) -> list[Call]:
        return [c for c in self.calls if c.path.endswith("/audio/speech")]

    @staticmethod
    def clip_index(text: str) -> int:
        return len(text) % len(CLIP_DURATIONS)

    def _next_fault(self, text: str) -> Fault | None:
        for fault in self.faults:
            if fault.match is None or fault.match in text:
                self.faults.remove(fault)
                return fault
        return self.refuse_all

    @staticmethod
    def audio_for(body: dict[str, Any], size: int) -> bytes:
        """Deterministic bytes for a request, so a test can check speccyd served exactly these."""
        seed = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
        return (seed * (size // len(seed) + 1))[:size]

    def _key(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else None

    def _auth_error(self, key: str | None) -> web.Response | None:
        if key is None or not key.startswith((GOOD_KEY_PREFIX, OTHER_GOOD_KEY_PREFIX)) or key in self.revoked:
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        return None

    async def models(self, request: web.Request) -> web.Response:
        key = self._key(request)
        self.calls.append(Call(request.path, key, None))
        if self.models_status is not None:
            echo = f" (key {key})" if self.echo_key else ""
            return _error(self.models_status, f"models are unavailable{echo}")
        denied = self._auth_error(key)
        if denied is not None:
            return denied
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in ("tts-1", "tts-1-hd")]
        return web.json_response({"object": "list", "data": data})

    async def speech(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        left = False

        def leave() -> None:
            # Counted out before the last byte is sent, so a client never sees the end while it still counts.
            nonlocal left
            if not left:
                left = True
                self.in_flight -= 1

        try:
            return await self._speech(request, leave)
        finally:
            leave()

    async def _speech(self, request: web.Request, leave: Callable[[], None]) -> web.StreamResponse:
        key = self._key(request)
        body = await request.json()
        call = Call(request.path, key, body)
        self.calls.append(call)
        await self.gate.wait()
        denied = self._auth_error(key)
        if denied is not None:
            return denied
        fault = self._next_fault(str(body.get("input", "")))
        if self.clips is not None:
            call.clip = self.clip_index(str(body["input"]))
            audio = self.clips[body.get("response_format", "mp3")][call.clip]
        else:
            audio = self.audio_for(body, self.audio_size)
        answer = Answer(audio, self.chunk_size, self.chunk_delay, self.latency, leave)
        if fault is None:
            return await _stream(request, answer)
        return await FAULTS[fault.kind](request, fault, answer)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/audio/speech", self.speech)
        return app


@dataclass
class Answer:
    """What a healthy upstream sends for one request, and how: the faults below bend it."""

    audio: bytes
    chunk_size: int
    chunk_delay: float
    latency: float  # before the headers
    leave: Callable[[], None]  # counts the request out of in_flight (before the last byte)


async def _stream(
    request: web.Request,
    answer: Answer,
    *,
    content_type: str = "audio/mpeg",
    content_length: int | None = None,
    chunk_size: int | None = None,
    chunk_delay: float | None = None,
    halfway: Callable[[], Awaitable[bool]] | None = None,
    finish: bool = True,
) -> web.StreamResponse:
    """The audio in chunks. `halfway` runs once half is sent (True: hang up there); `finish=False` hangs up
    instead of ending the body cleanly."""
    response = await _headers(request, answer, content_type, content_length)
    audio, size = answer.audio, chunk_size or answer.chunk_size
    delay = answer.chunk_delay if chunk_delay is None else chunk_delay
    for offset in range(0, len(audio), size):
        if halfway is not None and offset >= len(audio) // 2:
            if await halfway():
                return _hang_up(request, response)
            halfway = None
        try:
            await response.write(audio[offset : offset + size])
        except ConnectionError:  # speccyd gave up on us (a timeout); nothing more to send
            return response
        if delay:
            await asyncio.sleep(delay)
    if not finish:
        return _hang_up(request, response)
    answer.leave()
    await response.write_eof()
    return response


async def _headers(
    request: web.Request, answer: Answer, content_type: str = "audio/mpeg", content_length: int | None = None
) -> web.StreamResponse:
    """The response's headers, sent after the upstream's latency."""
    if answer.latency:
        await asyncio.sleep(answer.latency)
    response = web.StreamResponse(headers={"Content-Type": content_type})
    if content_length is not None:
        response.content_length = content_length
    await response.prepare(request)
    return response


def _hang_up(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return response


# --- one handler per Fault.kind: what the upstream sends instead of a healthy answer ---


async def _status(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    return _error(fault.status, fault.message, fault.code, headers)


async def _reset(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    return _hang_up(request, web.Response())


async def _stall_headers(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    await _until_hung_up(request)
    return web.Response()


async def _wrong_type(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    return await _stream(request, answer, content_type="text/html")


async def _cut(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    return await _stream(request, answer, content_length=len(answer.audio) * 2, finish=False)


async def _empty(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    response = await _headers(request, answer, content_length=0)
    await response.write_eof()
    return response


async def _stall(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    response = await _headers(request, answer)
    await _until_hung_up(request)
    return response


async def _endless(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    response = await _headers(request, answer)
    block = answer.audio[:1] * fault.chunk
    while True:
        try:
            await response.write(block)
        except ConnectionError:
            return response


async def _slow(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    return await _stream(request, answer, chunk_size=fault.chunk, chunk_delay=fault.delay)


async def _reset_mid(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    async def drop() -> bool:
        if fault.pause is not None:
            await fault.pause.wait()
        return True

    return await _stream(request, answer, halfway=drop)


async def _pause_mid(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    async def wait() -> bool:
        if fault.pause is not None:
            await fault.pause.wait()
        return False

    return await _stream(request, answer, halfway=wait)


FAULTS: dict[str, Callable[[web.Request, Fault, Answer], Awaitable[web.StreamResponse]]] = {
    "status": _status,
    "reset": _reset,
    "stall_headers": _stall_headers,
    "wrong_type": _wrong_type,
    "cut": _cut,
    "empty": _empty,
    "stall": _stall,
    "endless": _endless,
    "slow": _slow,
    "reset_mid": _reset_mid,
    "pause_mid": _pause_mid,
}


def _error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)
