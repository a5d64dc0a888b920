"""``/1.0/openapi.json``: the machine-readable description of this API (hand-written ``openapi.yaml``).

A test checks that every route the application serves is described here and vice versa, so the document
cannot drift from the code.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

routes = web.RouteTableDef()

SPEC_URL = "/1.0/openapi.json"


@functools.cache
def spec() -> dict[str, Any]:
    return yaml.safe_load(resources.files("hostagent.api").joinpath("openapi.yaml").read_text())


@routes.get(SPEC_URL)
async def get_spec(request: web.Request) -> web.Response:
    return web.json_response(spec())
