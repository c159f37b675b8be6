"""HTTP handlers, one module per area; `setup_routes` mounts them all."""

from __future__ import annotations

from aiohttp import web

from speccyd.web.handlers import (
    contract,
    files,
    health,
    imports,
    library,
    openai_compat,
    playback,
    signin,
    tts,
    user,
)


def setup_routes(app: web.Application) -> None:
    for module in (health, signin, tts, files, playback, imports, user, library, openai_compat, contract):
        app.add_routes(module.routes)
