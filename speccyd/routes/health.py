from __future__ import annotations

from aiohttp import web

from speccyd import __version__
from speccyd.errors import ApiError
from speccyd.keys import STORE

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        await store.run(store.ping)
    except Exception as e:
        raise ApiError(503, "database_unavailable", f"database check failed: {e}") from None
    return web.json_response({"status": "ok", "version": __version__})
