"""``/1.0/containers/<name>/console``: attach to a running container's console, or read its log (LXD's).

``POST`` (``width``, ``height``) answers an operation with websockets ``0`` (the console, both ways) and
``control`` (``window-resize``), relayed like an interactive exec (hostagent/execsession/); leaving it
detaches, the container runs on. ``GET`` returns the console's recent output (a bounded log).
"""

from __future__ import annotations

from aiohttp import web

from hostagent.api.containers import container_name
from hostagent.api.exec import start_session
from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import json_body
from orchapi.errors import BadRequest
from orchapi.execapi import terminal_size

routes = web.RouteTableDef()


@routes.post("/1.0/containers/{name}/console")
async def attach_console(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    body = await json_body(request)
    if body.get("type", "console") != "console":
        raise BadRequest("only the console type is supported (containers have no VGA console)")
    width, height = terminal_size(body.get("width", 0), body.get("height", 0))
    process = await agent.blocking(agent.runtime.console_process, name, width, height)
    return start_session(agent, name, process, True, f"Showing console of {name}")


@routes.get("/1.0/containers/{name}/console")
async def console_log(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    data = await agent.blocking(agent.runtime.console_log, container_name(request))
    return web.Response(body=data, content_type="application/octet-stream")
