"""HTTP handlers, one module per area; `setup_routes` mounts them all."""

from __future__ import annotations

from aiohttp import web

from speccyd.routes import auth, contract, files, health, library, openai_api, tts, user


def setup_routes(app: web.Application) -> None:
    for module in (health, auth, tts, files, user, library, openai_api, contract):
        app.add_routes(module.routes)
