"""``/1.0``: server information and server configuration."""

from __future__ import annotations

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import json_body, sync
from hostagent.migration.policy import ALLOW_KEY
from hostagent.runtimes.resume import TTL_KEY, parse_ttl
from hostagent.transfer.ratelimit import BWLIMIT_KEY, configured_rate
from orchapi.errors import BadRequest
from orchapi.modes import MODES_KEY, parse_modes
from orchapi.rates import parse_rate

routes = web.RouteTableDef()

#: server config keys a trusted caller may set, with their allowed values (None: any string)
SERVER_KEYS: dict[str, tuple[str, ...] | None] = {
    "core.trust_password": None,
    # the host's scheduling state, set by `orch cordon` / `orch evacuate` / `orch restore`; the agent
    # refuses new containers while it is in REFUSING_STATES (containers.py), so no client can bypass a
    # cordon. "restoring" lets `orch restore` move containers back (the orchestrator's record is in Redis)
    "orch.status": ("", "cordoned", "evacuating", "evacuated", "restoring"),
    # whether every migration may bring elevated containers here (privileged, raw.*, host devices ...);
    # without it only a job's own --allow-privileged does (hostagent/migration/policy.py)
    ALLOW_KEY: ("", "true", "false"),
    # this agent's total bandwidth for migrations (each direction, all at once): "50MiB", "" for none
    BWLIMIT_KEY: None,
    # the transfer modes this agent takes part in, e.g. "push,relay" ("" for all; orchapi/modes.py)
    MODES_KEY: None,
    # how long an interrupted transfer's staging is kept to be resumed: "24h" (the default), "30m", "90s"
    TTL_KEY: None,
}


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
        allowed = SERVER_KEYS[key]
        if allowed is not None and value not in allowed:
            expected = "expected one of: " + ", ".join(repr(v) for v in allowed)
            raise BadRequest(f"invalid value {value!r} for {key}", expected)
    if config.get(BWLIMIT_KEY):
        parse_rate(config[BWLIMIT_KEY])  # refused here, before anything is stored
    if MODES_KEY in config:
        parse_modes(config[MODES_KEY])
    if TTL_KEY in config:
        parse_ttl(config[TTL_KEY])
    if "core.trust_password" in config:
        await agent.blocking(agent.trust.set_password, config["core.trust_password"])
    for key in ("orch.status", ALLOW_KEY, BWLIMIT_KEY, MODES_KEY, TTL_KEY):
        if key in config:
            await agent.blocking(agent.trust.set_server_key, key, config[key])
    if BWLIMIT_KEY in config:  # the transfers running now too
        agent.bandwidth.set_rate(configured_rate(config[BWLIMIT_KEY]))
    return sync({})


routes.put("/1.0")(patch_server)
