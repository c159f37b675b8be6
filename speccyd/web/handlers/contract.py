"""The API contract: the OpenAPI 3.1 document in speccyd/openapi.json, served with this server's own facts.

The served document is the repository's, with its version from speccyd's one version (`__version__`) and
the models and voices this server accepts (the `models` and `voices` settings). With the default settings it
is the repository file byte for byte (json.dumps with indent 2 round-trips it exactly).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

from aiohttp import web

from speccyd import __version__
from speccyd.appkeys import SETTINGS
from speccyd.generation.speech import INSTRUCTION_MODELS, MODELS, VOICES

routes = web.RouteTableDef()


def _pattern_literal(name: str) -> str:
    # Names hold letters, digits and . _ : + / @ - (settings._NAME); only . and + mean something in a regex.
    return name.replace(".", "[.]").replace("+", "[+]")


def model_schema(models: tuple[str, ...]) -> dict[str, Any]:
    """A listed model, or OpenAI's dated snapshot of one ("gpt-4o-mini-tts-2025-12-15")."""
    alternatives = "|".join(_pattern_literal(m) for m in models)
    return {
        "type": "string",
        "anyOf": [{"enum": list(models)}, {"pattern": f"^({alternatives})-[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$"}],
        "description": "One of the server's models (GET /v1/models), or a dated snapshot of one.",
    }


def instructions_rule(instruction_models: tuple[str, ...]) -> dict[str, Any]:
    """JSON Schema's if/then for "instructions only with the models that take them" (and their snapshots)."""
    then: Any = {"required": ["model"], "properties": {"model": model_schema(instruction_models)}}
    if not instruction_models:
        then = False
    return {
        "if": {"required": ["instructions"], "properties": {"instructions": {"type": "string", "minLength": 1}}},
        "then": then,
    }


@functools.cache
def openapi_document(
    models: tuple[str, ...] = MODELS,
    voices: tuple[str, ...] = VOICES,
    instruction_models: tuple[str, ...] = INSTRUCTION_MODELS,
) -> bytes:
    doc = json.loads(importlib.resources.files("speccyd").joinpath("openapi.json").read_bytes())
    doc["info"]["version"] = __version__
    schemas = doc["components"]["schemas"]
    schemas["Model"] = model_schema(models)
    schemas["Voice"] = {**schemas["Voice"], "enum": list(voices)}
    for name in ("GenerateRequest", "SpeechRequest"):
        schemas[name].update(instructions_rule(instruction_models))
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document: clients generate code from it (swift-openapi-generator, openapi-generator)."""
    s = request.app[SETTINGS]
    body = openapi_document(s.models, s.voices, s.instruction_models)
    return web.Response(body=body, content_type="application/json")
