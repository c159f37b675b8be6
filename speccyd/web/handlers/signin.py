"""POST /auth/verify: an OpenAI key in, a session token out."""

from __future__ import annotations

from aiohttp import web

from speccyd.appkeys import SESSIONS, SETTINGS, SIGN_IN
from speccyd.config.units import iso
from speccyd.web.common import json_body

routes = web.RouteTableDef()


@routes.post("/auth/verify")
async def verify(request: web.Request) -> web.Response:
    """Check an OpenAI key with the upstream and trade it for a session token."""
    body = await json_body(request)
    user_id = await request.app[SIGN_IN].sign_in(body.get("openai_token"), request.remote or "unknown")
    token, expires = request.app[SESSIONS].issue(user_id, request.app[SETTINGS].session_ttl)
    return web.json_response({"user_id": user_id, "session_token": token, "expires_at": iso(expires)})
