"""``/1.0/suspended-imports``: transfers interrupted on their way here, kept to be resumed.

A pull that failed for a reason worth retrying (the peer went away, a timeout, an agent restart) leaves
its staging dir suspended until its journal expires (``migration.resume_ttl``; hostagent/runtimes/
resume.py); the next pull of the same container from the same source resumes it. Trusted callers may
list them (what each holds, when it expires) and discard one (``orch jobs cancel`` of a failed job does).
"""

from __future__ import annotations

from aiohttp import web

from hostagent.api.containers import container_name
from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import recursion, sync
from hostagent.runtimes import resume
from orchapi.errors import NotFound

routes = web.RouteTableDef()


@routes.get("/1.0/suspended-imports")
async def list_suspended(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    found = await agent.blocking(resume.suspended, agent.runtime)
    if recursion(request):
        return sync([j.describe(name) for name, _, j in found if j is not None])
    return sync([f"/1.0/suspended-imports/{name}" for name, _, _ in found])


@routes.delete("/1.0/suspended-imports/{name}")
async def discard_suspended(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    async with agent.container_lock(name):  # not while a pull of it resumes it
        if not await agent.blocking(agent.runtime.discard_suspended, name):
            raise NotFound(f"no suspended import of {name}")
    return sync({})
