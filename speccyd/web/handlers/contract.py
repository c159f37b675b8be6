"""The API contract: the OpenAPI 3.1 document in speccyd/openapi.json, served as is."""

from __future__ import annotations

import functools
import importlib.resources

from aiohttp import web

routes = web.RouteTableDef()


@functools.cache
def openapi_document() -> bytes:
    return importlib.resources.files("speccyd").joinpath("openapi.json").read_bytes()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document: clients generate code from it (swift-openapi-generator, openapi-generator)."""
    return web.Response(body=openapi_document(), content_type="application/json")
