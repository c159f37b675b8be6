"""Prometheus metrics, one registry per app (tests build many apps; the global registry would collide).

Counters and histograms are updated as things happen; the stored-audio gauges and the cache hit ratio
are read from the database when /metrics is scraped, so they are right even after a CLI purge.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.imports = Counter(
            "speccyd_imports",
            "Imported audio files by outcome: imported, kept (the user had it already), invalid_audio, "
            "too_large, quota_exceeded.",
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
        self.refreshing: asyncio.Future[None] | None = None  # the database gauges' refresh under way
        self.ratio_at: float | None = None  # when the cache hit ratio was last computed (monotonic)

    def render(self) -> bytes:
        return generate_latest(self.registry)
