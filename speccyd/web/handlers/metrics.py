"""GET /metrics in the Prometheus text format: on the main port only when `metrics = on`."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from speccyd.appkeys import CLOCK, FILES, METRICS, RUNNER, SETTINGS
from speccyd.generation.costs import WINDOW_30D, price_table, summarize

routes = web.RouteTableDef()


# A ratio over 30 days barely moves in a minute; recomputing it (every user's usage of the last two days)
# at every scrape would cost a scraper in a loop a report's worth of reading each time.
RATIO_REFRESH = 60.0


async def _refresh(app: web.Application) -> None:
    """The gauges that live in the database, read on the report reader, so a scrape never queues in front of
    a request's lookup: the stored totals every time, the 30-day cache hit ratio at most once a minute."""
    metrics, files, clock = app[METRICS], app[FILES], app[CLOCK]
    count, size = await files.storage_totals()
    metrics.files_stored.set(count)
    metrics.bytes_stored.set(size)
    if metrics.ratio_at is None or clock.monotonic() - metrics.ratio_at >= RATIO_REFRESH:
        # usage_lines writes the last second's cache hits first, so the ratio counts them too.
        lines = await files.usage_lines(clock.now() - WINDOW_30D)
        ratio = summarize(lines, price_table(app[SETTINGS])).cache_hit_ratio
        metrics.cache_hit_ratio.set(ratio or 0.0)
        metrics.ratio_at = clock.monotonic()


async def scrape(app: web.Application) -> web.Response:
    """Refresh the gauges that live in the database, then render every metric."""
    metrics = app[METRICS]
    # Scrapes arriving while a refresh runs share it: a scraper in a tight loop costs one refresh at a time.
    if metrics.refreshing is None or metrics.refreshing.done():
        metrics.refreshing = asyncio.ensure_future(_refresh(app))
    await asyncio.shield(metrics.refreshing)
    metrics.jobs_running.set(app[RUNNER].running)
    # Content-Type carries parameters (version, charset), so it goes in as a header, not content_type=.
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return await scrape(request.app)


def metrics_app(main: web.Application) -> web.Application:
    """The small app behind `metrics_listen`: only /metrics, reading the main app's state."""

    async def handler(request: web.Request) -> web.Response:
        return await scrape(main)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
