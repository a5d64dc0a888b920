"""``/1.0``: server information and server configuration."""

from __future__ import annotations

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import json_body, sync
from orchapi.errors import BadRequest

routes = web.RouteTableDef()

#: server config keys a trusted caller may set
SERVER_KEYS = ("core.trust_password",)


@routes.get("/1.0")
async def get_server(request: web.Request) -> web.Response:
    return sync(request.app[AGENT_KEY].server_info(request["trusted"]))


@routes.patch("/1.0")
async def patch_server(request: web.Request) -> web.Response:
    """Update server config keys; ``core.trust_password`` is stored only as a scrypt hash."""
    agent = request.app[AGENT_KEY]
    body = await json_body(request)
    config = body.get("config", {})
    if not isinstance(config, dict):
        raise BadRequest("config must be a JSON object")
    for key, value in config.items():
        if key not in SERVER_KEYS:
            raise BadRequest(f"unknown server config key {key!r}", "known keys: " + ", ".join(SERVER_KEYS))
        if not isinstance(value, str):
            raise BadRequest(f"value of {key} must be a string")
    if "core.trust_password" in config:
        await agent.blocking(agent.trust.set_password, config["core.trust_password"])
    return sync({})


routes.put("/1.0")(patch_server)
