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
from collections.abc import Callable
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
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return _error(fault.status, fault.message, fault.code, headers)
        if fault is not None and fault.kind == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if fault is not None and fault.kind == "stall_headers":
            await _until_hung_up(request)
            return web.Response()
        if self.latency:
            await asyncio.sleep(self.latency)
        content_type = "text/html" if fault is not None and fault.kind == "wrong_type" else "audio/mpeg"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if fault is not None and fault.kind == "cut":
            response.content_length = len(audio) * 2
        elif fault is not None and fault.kind == "empty":
            response.content_length = 0
        await response.prepare(request)
        if fault is not None and fault.kind == "empty":
            await response.write_eof()
            return response
        if fault is not None and fault.kind == "stall":
            await _until_hung_up(request)
            return response
        if fault is not None and fault.kind == "endless":
            block = audio[:1] * fault.chunk
            while True:
                try:
                    await response.write(block)
                except ConnectionError:
                    return response
        chunk_size, chunk_delay = self.chunk_size, self.chunk_delay
        if fault is not None and fault.kind == "slow":
            chunk_size, chunk_delay = fault.chunk, fault.delay
        for offset in range(0, len(audio), chunk_size):
            if fault is not None and fault.kind in ("reset_mid", "pause_mid") and offset >= len(audio) // 2:
                if fault.pause is not None:
                    await fault.pause.wait()
                if fault.kind == "reset_mid":
                    assert request.transport is not None
                    request.transport.close()
                    return response
                fault = None
            try:
                await response.write(audio[offset : offset + chunk_size])
            except ConnectionError:  # speccyd gave up on us (a timeout); nothing more to send
                return response
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        if fault is not None and fault.kind == "cut":
            assert request.transport is not None
            request.transport.close()
            return response
        leave()
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/audio/speech", self.speech)
        return app


def _error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)
