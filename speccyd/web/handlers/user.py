from __future__ import annotations

import time

from aiohttp import web

from speccyd.appkeys import JOBS, QUOTAS, SETTINGS, STORE
from speccyd.config.units import iso
from speccyd.generation.cleanup import LAST_CLEANUP
from speccyd.generation.costs import WINDOW_30D, price_table, summarize
from speccyd.generation.quotas import next_utc_midnight
from speccyd.storage.database import UsageLine
from speccyd.web.auth import require_user

routes = web.RouteTableDef()


@routes.get("/user/usage")
async def usage(request: web.Request) -> web.Response:
    """Files, storage, characters, cache hits and estimated cost of the signed-in user, with their limits."""
    user_id = require_user(request)
    store = request.app[STORE]
    await request.app[JOBS].flush_hits()  # cache hits answered from memory are written about once a second
    now = time.time()
    figures = await store.run(store.user_usage, user_id, now)
    last_cleanup = await store.run(store.get_meta, LAST_CLEANUP)
    lines: list[UsageLine] = await store.run(store.usage_lines, now - WINDOW_30D, user_id)
    month = summarize(lines, price_table(request.app[SETTINGS]))
    overrides = await store.run(store.user_overrides, user_id)
    limits = overrides.apply(request.app[QUOTAS].defaults)
    return web.json_response(
        {
            "files_count": figures.files_count if figures else 0,
            "storage_used_mb": round((figures.storage_bytes if figures else 0) / 1_000_000, 3),
            "generated_today": figures.generated_today if figures else 0,
            "characters_today": figures.characters_today if figures else 0,
            **month.figures_30d(),
            # null: no limit. The daily limit resets at midnight UTC.
            "limits": {
                "daily_char_quota": limits.daily_chars or None,
                "storage_quota_bytes": limits.storage_bytes or None,
                "max_files": limits.max_files or None,
                "daily_resets_at": iso(next_utc_midnight(now)),
            },
            "last_cleanup": iso(float(last_cleanup)) if last_cleanup else None,
        }
    )
