"""``/1.0/operations``: follow, wait for and cancel background work."""

from __future__ import annotations

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import recursion, sync
from orchapi.errors import BadRequest

routes = web.RouteTableDef()


@routes.get("/1.0/operations")
async def list_operations(request: web.Request) -> web.Response:
    ops = request.app[AGENT_KEY].operations.list()
    if recursion(request):
        return sync([op.to_api() for op in ops])
    return sync([f"/1.0/operations/{op.id}" for op in ops])


@routes.get("/1.0/operations/{id}")
async def get_operation(request: web.Request) -> web.Response:
    return sync(request.app[AGENT_KEY].operations.get(request.match_info["id"]).to_api())


@routes.get("/1.0/operations/{id}/wait")
async def wait_operation(request: web.Request) -> web.Response:
    """Block until the operation ends or ``?timeout=`` seconds pass (default 30, at most 600)."""
    try:
        timeout = float(request.query.get("timeout", "30"))
    except ValueError:
        raise BadRequest("timeout must be a number of seconds") from None
    if not 0 <= timeout <= 600:
        raise BadRequest("timeout must be between 0 and 600 seconds")
    op = await request.app[AGENT_KEY].operations.wait(request.match_info["id"], timeout)
    return sync(op.to_api())


@routes.delete("/1.0/operations/{id}")
async def cancel_operation(request: web.Request) -> web.Response:
    """Cancel an operation. ``?resumable=1`` says the cancel is an interruption, not a decision: a
    transfer cancelled so (its other side failed) keeps what it received to be resumed
    (hostagent/migration/target/resume.py), as it would had its connection dropped."""
    resumable = request.query.get("resumable") in ("1", "true")
    operations = request.app[AGENT_KEY].operations
    return sync(operations.cancel(request.match_info["id"], by_client=not resumable).to_api())
