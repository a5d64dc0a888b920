"""``/1.0/containers``: create from an image, inspect, configure, delete, and change state.

State-changing requests return an operation (``202``): the client waits on it. Each runs under the
container's lock, so requests on one container are applied one at a time, in order of arrival.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import async_op, json_body, recursion, sync
from hostagent.operations import Operation
from hostagent.runtimes.base import RUNNING
from orchapi.api.containers import StateChange
from orchapi.errors import BadRequest, Conflict
from orchapi.names import check_container_name

routes = web.RouteTableDef()


def container_name(request: web.Request) -> str:
    return check_container_name(request.match_info["name"])


def resources(name: str) -> dict[str, list[str]]:
    return {"containers": [f"/1.0/containers/{name}"]}


@routes.get("/1.0/containers")
async def list_containers(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    records = await agent.blocking(agent.runtime.list)
    if recursion(request):
        return sync([r.to_api() for r in records])
    return sync([f"/1.0/containers/{r.name}" for r in records])


#: ``orch.status`` values (server.py) in which this host accepts no new containers
REFUSING_STATES = ("cordoned", "evacuating", "evacuated")


async def refuse_if_cordoned(agent: Any) -> None:
    """409 while the host is cordoned, evacuating or evacuated: enforced here, on the host, so that a
    second remote name, another orchestrator or a direct API call can't get around a cordon."""
    status = (await agent.blocking(agent.trust.server_config)).get("orch.status", "")
    if status in REFUSING_STATES:
        hint = f"orch uncordon {agent.name}: to allow them"
        if status != "cordoned":
            hint += f", or orch restore {agent.name}: to bring its containers back"
        raise Conflict(f"this host is {status}: it accepts no new containers", hint)


@routes.post("/1.0/containers")
async def create_container(request: web.Request) -> web.Response:
    """Create a container from an image given by fingerprint or alias (``source.type == "image"``), or
    pull one from another agent (``source.type == "migration"``); refused while the host is cordoned."""
    agent = request.app[AGENT_KEY]
    body = await json_body(request)
    name = check_container_name(body.get("name"))
    await refuse_if_cordoned(agent)
    source = body.get("source") or {}
    if isinstance(source, dict) and source.get("type") == "migration":
        from hostagent.migration.target import start_pull

        return async_op(await start_pull(agent, name, source))
    if not isinstance(source, dict) or source.get("type", "image") != "image":
        raise BadRequest("source.type must be 'image' or 'migration'")
    ref = source.get("fingerprint") or source.get("alias")
    if not isinstance(ref, str) or not ref:
        raise BadRequest("source needs an image 'fingerprint' or 'alias'")
    config = agent.runtime.validate_config(body.get("config") or {})
    image = await agent.blocking(agent.images.get, ref)  # 404 now rather than inside the operation
    if name in {r.name for r in await agent.blocking(agent.runtime.list)}:
        raise Conflict(f"container {name} already exists")
    start = bool(body.get("start"))

    async def work(op: Operation) -> dict[str, Any]:
        async with agent.container_lock(name):
            record = await agent.blocking(agent.runtime.create, name, image.fingerprint, config)
            if start:
                await agent.blocking(agent.runtime.start, name)
        return {"container": record.to_api()}

    return async_op(agent.operations.start(f"Creating container {name}", work, resources(name)))


@routes.post("/1.0/containers/{name}")
async def rename_container(request: web.Request) -> web.Response:
    """Rename a stopped container: ``{"name": "new-name"}`` (a move within one agent)."""
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    body = await json_body(request)
    new_name = check_container_name(body.get("name"))
    if new_name == name:
        raise BadRequest(f"container {name} already has that name")
    record = await agent.blocking(agent.runtime.get, name)
    if record.status == RUNNING:
        raise Conflict(f"container {name} is running; stop it first")
    if new_name in {r.name for r in await agent.blocking(agent.runtime.list)}:
        raise Conflict(f"container {new_name} already exists")

    async def work(op: Operation) -> dict[str, Any]:
        first, second = sorted((name, new_name))
        async with agent.container_lock(first), agent.container_lock(second):
            record = await agent.blocking(agent.runtime.rename, name, new_name)
        return {"container": record.to_api()}

    return async_op(agent.operations.start(f"Renaming container {name} to {new_name}", work, resources(name)))


@routes.get("/1.0/containers/{name}")
async def get_container(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    record = await agent.blocking(agent.runtime.get, container_name(request))
    return sync(record.to_api())


async def _update(request: web.Request, merge: bool) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    body = await json_body(request)
    current = await agent.blocking(agent.runtime.get, name)
    if "restore" in body:
        return _restore(request, name, body["restore"])
    new = agent.runtime.validate_config(body.get("config") or {})
    config = {**current.config, **new} if merge else new

    async def work(op: Operation) -> dict[str, Any]:
        async with agent.container_lock(name):
            record = await agent.blocking(agent.runtime.update_config, name, config)
        return {"container": record.to_api()}

    return async_op(agent.operations.start(f"Updating container {name}", work, resources(name)))


def _restore(request: web.Request, name: str, snapshot: Any) -> web.Response:
    """Restore a snapshot; a running container is stopped first and started again afterwards (as LXD)."""
    from orchapi.names import check_snapshot_name

    agent = request.app[AGENT_KEY]
    snapshot = check_snapshot_name(snapshot)

    async def work(op: Operation) -> None:
        async with agent.container_lock(name):
            was_running = (await agent.blocking(agent.runtime.get, name)).status == RUNNING
            if was_running:
                await agent.blocking(agent.runtime.stop, name, False, 30.0)
            try:
                await agent.blocking(agent.runtime.snapshot_restore, name, snapshot)
            finally:
                if was_running:
                    await agent.blocking(agent.runtime.start, name)

    return async_op(agent.operations.start(f"Restoring snapshot {name}/{snapshot}", work, resources(name)))


@routes.put("/1.0/containers/{name}")
async def put_container(request: web.Request) -> web.Response:
    return await _update(request, merge=False)


@routes.patch("/1.0/containers/{name}")
async def patch_container(request: web.Request) -> web.Response:
    return await _update(request, merge=True)


@routes.delete("/1.0/containers/{name}")
async def delete_container(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    record = await agent.blocking(agent.runtime.get, name)
    if record.status == RUNNING:
        raise Conflict(f"container {name} is running", "stop it first, or use --force")

    async def work(op: Operation) -> None:
        async with agent.container_lock(name):
            # done once the name is gone; the files go in the background (a move's source: the job
            # need not wait for a large tree's removal)
            remove = await agent.blocking(agent.runtime.delete_aside, name)
        agent.in_background(f"removing the files of deleted container {name}", remove)

    return async_op(agent.operations.start(f"Deleting container {name}", work, resources(name)))


@routes.get("/1.0/containers/{name}/state")
async def get_state(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return sync(await agent.blocking(agent.runtime.state, container_name(request)))


@routes.put("/1.0/containers/{name}/state")
async def put_state(request: web.Request) -> web.Response:
    """``{"action": "start"|"stop"|"restart", "force": bool, "timeout": seconds}``."""
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    change = StateChange.from_json(await json_body(request))
    action, force, timeout = change.action, change.force, change.timeout
    record = await agent.blocking(agent.runtime.get, name)
    if action == "start" and record.status == RUNNING:
        raise Conflict(f"container {name} is already running")
    if action in ("stop", "restart") and record.status != RUNNING:
        raise Conflict(f"container {name} is not running")

    async def work(op: Operation) -> None:
        async with agent.container_lock(name):
            if action in ("stop", "restart"):
                await agent.blocking(agent.runtime.stop, name, force, float(timeout))
            if action in ("start", "restart"):
                await agent.blocking(agent.runtime.start, name)

    verb = {"start": "Starting", "stop": "Stopping", "restart": "Restarting"}[action]
    return async_op(agent.operations.start(f"{verb} container {name}", work, resources(name)))
