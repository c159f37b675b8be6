from __future__ import annotations

import time

from aiohttp import web

from speccyd.auth import require_user
from speccyd.cleanup import LAST_CLEANUP
from speccyd.keys import STORE
from speccyd.timeutil import iso

routes = web.RouteTableDef()


@routes.get("/user/usage")
async def usage(request: web.Request) -> web.Response:
    user_id = require_user(request)
    store = request.app[STORE]
    figures = await store.run(store.user_usage, user_id, time.time())
    last_cleanup = await store.run(store.get_meta, LAST_CLEANUP)
    return web.json_response(
        {
            "files_count": figures.files_count if figures else 0,
            "storage_used_mb": round((figures.storage_bytes if figures else 0) / 1_000_000, 3),
            "generated_today": figures.generated_today if figures else 0,
            "characters_today": figures.characters_today if figures else 0,
            "last_cleanup": iso(float(last_cleanup)) if last_cleanup else None,
        }
    )
