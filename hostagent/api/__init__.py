"""The agent's REST endpoints, one module per resource (as LXD's ``api_*.go``).

:func:`build_app` assembles them into one aiohttp application served on both the HTTPS listener and the
local unix socket; the middlewares decide who is trusted and turn errors into JSON.
"""

from __future__ import annotations

from aiohttp import web

from hostagent.api import (
    certificates,
    console,
    containers,
    images,
    migration,
    openapi,
    operations,
    server,
    sinks,
    snapshots,
    suspended,
)
from hostagent.api import (
    exec as exec_api,
)
from hostagent.api.middleware import AGENT_KEY, auth_middleware, error_middleware

MODULES = (
    server,
    certificates,
    containers,
    snapshots,
    exec_api,
    console,
    images,
    migration,
    sinks,
    suspended,
    operations,
    openapi,
)


def build_app(agent: Agent) -> web.Application:  # noqa: F821
    """One application for every listener; ``agent`` holds the runtime, stores and registries."""
    # no size limit for streamed bodies (image uploads are streamed to disk, never read whole)
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=16 * 1024**2)
    app[AGENT_KEY] = agent
    for module in MODULES:
        app.router.add_routes(module.routes)
    return app
