"""Prometheus metrics, one registry per app (tests build many apps; the global registry would collide).

Counters and histograms are updated as things happen; the stored-audio gauges and the cache hit ratio
are read from the database when /metrics is scraped, so they are right even after a CLI purge.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from speccyd.web.errors import Handler

# Upstream speech calls take from ~0.3s (short text, first byte) to a minute (4096 characters, whole body).
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "speccyd_http_requests", "HTTP requests by route and status.", ["method", "route", "status"], registry=r
        )
        self.generations = Counter(
            "speccyd_generations",
            "Audio requests by outcome: generated, failed, cache_hit, joined (an identical one in flight), "
            "quota_exceeded.",
            ["outcome"],
            registry=r,
        )
        self.upstream_first_byte = Histogram(
            "speccyd_upstream_first_byte_seconds",
            "Time from an upstream speech call to its first audio bytes.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "speccyd_upstream_duration_seconds",
            "Time for a whole upstream speech call, successful or not.",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "speccyd_cache_hit_ratio",
            "Share of audio requests served from the cache over the last 30 days.",
            registry=r,
        )
        self.bytes_stored = Gauge("speccyd_stored_bytes", "Bytes of ready audio on disk.", registry=r)
        self.files_stored = Gauge("speccyd_stored_files", "Ready audio files on disk.", registry=r)
        self.active_streams = Gauge("speccyd_active_streams", "Audio downloads being sent right now.", registry=r)
        self.jobs_running = Gauge("speccyd_generations_running", "Generations in progress.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(request: web.Request) -> str:
    # The route's pattern, never the raw path: file ids and hashes would make one series per file.
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return str(resource.canonical)


def metrics_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            metrics.requests.labels(request.method, route_label(request), str(status)).inc()

    return middleware


class CountedFileResponse(web.FileResponse):
    """A FileResponse counted in `speccyd_active_streams` while aiohttp sends it (all of it is in prepare)."""

    def __init__(self, metrics: Metrics, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._active = metrics.active_streams

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._active.inc()
        try:
            return await super().prepare(request)
        finally:
            self._active.dec()
