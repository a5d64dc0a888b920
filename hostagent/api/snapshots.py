"""``/1.0/containers/<name>/snapshots``: read-only point-in-time copies of a container's rootfs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hostagent.api.containers import container_name, resources
from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import async_op, json_body, recursion, sync
from hostagent.operations import Operation
from orchapi.errors import Conflict, NotFound
from orchapi.names import check_snapshot_name

routes = web.RouteTableDef()


@routes.get("/1.0/containers/{name}/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    record = await agent.blocking(agent.runtime.get, name)
    if recursion(request):
        return sync([s.to_api(name) for s in record.snapshots])
    return sync([f"/1.0/containers/{name}/snapshots/{s.name}" for s in record.snapshots])


@routes.post("/1.0/containers/{name}/snapshots")
async def create_snapshot(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    body = await json_body(request)
    snapshot = check_snapshot_name(body.get("name"))
    record = await agent.blocking(agent.runtime.get, name)
    if any(s.name == snapshot for s in record.snapshots):
        raise Conflict(f"snapshot {name}/{snapshot} already exists")

    async def work(op: Operation) -> dict[str, Any]:
        async with agent.container_lock(name):
            snap = await agent.blocking(agent.runtime.snapshot_create, name, snapshot)
        return {"snapshot": snap.to_api(name)}

    return async_op(agent.operations.start(f"Snapshotting container {name}", work, resources(name)))


async def _find(request: web.Request) -> tuple[str, str, dict[str, Any]]:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    snapshot = check_snapshot_name(request.match_info["snapshot"])
    record = await agent.blocking(agent.runtime.get, name)
    for snap in record.snapshots:
        if snap.name == snapshot:
            return name, snapshot, snap.to_api(name)
    raise NotFound(f"snapshot {name}/{snapshot} not found")


@routes.get("/1.0/containers/{name}/snapshots/{snapshot}")
async def get_snapshot(request: web.Request) -> web.Response:
    _, _, api = await _find(request)
    return sync(api)


@routes.delete("/1.0/containers/{name}/snapshots/{snapshot}")
async def delete_snapshot(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name, snapshot, _ = await _find(request)

    async def work(op: Operation) -> None:
        async with agent.container_lock(name):
            await agent.blocking(agent.runtime.snapshot_delete, name, snapshot)

    return async_op(agent.operations.start(f"Deleting snapshot {name}/{snapshot}", work, resources(name)))
