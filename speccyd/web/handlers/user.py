"""GET /user/usage: the signed-in user's files, storage, usage, cost and limits."""

from __future__ import annotations

from aiohttp import web

from speccyd.appkeys import CLOCK, DATABASE, FILES, QUOTAS, SETTINGS
from speccyd.config.units import iso
from speccyd.generation.cleanup import LAST_CLEANUP
from speccyd.generation.costs import WINDOW_30D, price_table, summarize
from speccyd.generation.quotas import next_utc_midnight
from speccyd.web.auth import require_user

routes = web.RouteTableDef()


@routes.get("/user/usage")
async def usage(request: web.Request) -> web.Response:
    """Files, storage, characters, cache hits and estimated cost of the signed-in user, with their limits."""
    user_id = require_user(request)
    files, db = request.app[FILES], request.app[DATABASE]
    now = request.app[CLOCK].now()
    figures = await files.user_usage(user_id)
    last_cleanup = await db.get_meta(LAST_CLEANUP)
    month = summarize(await files.usage_lines(now - WINDOW_30D, user_id), price_table(request.app[SETTINGS]))
    overrides = await db.user_overrides(user_id)
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
