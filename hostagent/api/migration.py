"""Migrations, source side: issue tokens for a container, serve its image and its volumes to the target.

- ``POST /1.0/containers/<name>/migration`` (trusted): one-shot secrets for the ``image`` and ``fs``
  channels, scoped to this container (its snapshot list) and to the target agent's certificate, which is
  loaded into the live TLS context so that the target's handshake with that certificate succeeds.
- ``POST /1.0/migrations/<id>/push`` (trusted): push mode, the source dials the target's sink
  (hostagent/migration/push.py).
- ``DELETE /1.0/migrations/<id>`` (trusted): revoke; idempotent (200 for a migration already used,
  expired or revoked), 404 only for an id this agent never issued or forgot (an hour after expiry, or
  after a restart).
- ``GET /1.0/migrations/<id>/image`` and ``GET /1.0/migrations/<id>/fs`` (websocket): not authorised
  by the trust store but by ``Authorization: Bearer <token>`` plus the TLS client certificate the token
  was issued to (see :mod:`hostagent.migration.tokens`). Refusals are 403 JSON errors, with the message
  also in the ``X-Orch-Error`` header (a websocket client sees only the headers of a refused upgrade).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from hostagent.api.containers import container_name
from hostagent.api.middleware import AGENT_KEY, peer_fingerprint
from hostagent.api.responses import async_op, error, json_body, sync
from hostagent.images.store import has_image
from hostagent.migration.modes import require_mode
from hostagent.migration.protocol import HEARTBEAT
from hostagent.migration.push import parse_push, start_push
from hostagent.migration.source import SourceSession, volume_sizes
from orchapi import certs
from orchapi.api.migration import MigrationIssued, MigrationRequest
from orchapi.errors import BadRequest, Forbidden, OrchError
from orchapi.modes import MAX_MESSAGE

routes = web.RouteTableDef()


@routes.post("/1.0/containers/{name}/migration")
async def create_migration(request: web.Request) -> web.Response:
    """Body: ``{"target_certificate": PEM, "snapshot": null|name, "instance_only": bool, "ttl": seconds,
    "bwlimit": bytes per second, "mode": "pull"|"push"|"relay"}`` (the mode is checked against this
    host's migration.modes; the target certificate is the relaying worker's in relay mode)."""
    agent = request.app[AGENT_KEY]
    name = container_name(request)
    want = MigrationRequest.from_json(await json_body(request))
    fingerprint = certs.fingerprint_pem(want.target_certificate)
    require_mode(await agent.blocking(agent.trust.server_config), want.mode)
    snapshot, instance_only, pem = want.snapshot, want.instance_only, want.target_certificate
    plan = await agent.blocking(agent.runtime.export_plan, name, snapshot, instance_only)
    size = sum(u.bytes for u in await agent.blocking(volume_sizes, agent, [v.path for v in plan.volumes]))
    image_available = bool(plan.base_image) and await agent.blocking(has_image, agent.images, plan.base_image)
    migration, tokens = agent.migrations.issue(
        name,
        snapshot,
        [s.name for s in plan.snapshots],
        instance_only,
        plan.base_image,
        fingerprint,
        pem,
        want.ttl,
    )
    migration.bwlimit = want.bwlimit
    if agent.ssl_context is not None:
        # the target presents this certificate as its client certificate: the handshake must accept it
        agent.ssl_context.load_verify_locations(cadata=pem)
    record = await agent.blocking(agent.runtime.get, name)
    issued = MigrationIssued(
        id=migration.id,
        secrets=tokens,
        certificate=agent.certificate,
        expires_at=migration.expires_at,
        snapshots=[s.name for s in plan.snapshots],
        base_image=plan.base_image,
        base_image_available=image_available,
        methods=plan.methods(agent.transfer_methods),
        size=size,
        container=record.to_api(),
    )
    return sync(issued.to_json(), status=201)


@routes.post("/1.0/migrations/{id}/push")
async def push_migration(request: web.Request) -> web.Response:
    """Push mode (trusted: the worker): dial the target's sink and send the container; an operation.
    Body: ``{"addresses": ["HOST:PORT", ...], "sink": id, "secret": token}``."""
    agent = request.app[AGENT_KEY]
    migration = agent.migrations.get(request.match_info["id"])
    push = parse_push(await json_body(request))
    require_mode(await agent.blocking(agent.trust.server_config), "push")
    return async_op(start_push(agent, migration, push.addresses, push.sink, push.secret))


@routes.delete("/1.0/migrations/{id}")
async def delete_migration(request: web.Request) -> web.Response:
    request.app[AGENT_KEY].migrations.revoke(request.match_info["id"])
    return sync({})


def refusal(exc: OrchError) -> web.Response:
    """A token endpoint's 403 (or other 4xx): JSON, and the message in ``X-Orch-Error`` for websocket
    clients, which see only the headers of a refused upgrade."""
    response = error(str(exc), exc.status)
    response.headers["X-Orch-Error"] = (
        str(exc).encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
    )
    return response


def bearer_token(request: web.Request, no_certificate: str) -> tuple[str, str]:
    """The one-time token a token endpoint was called with, and the fingerprint of the caller's TLS
    certificate it must be bound to (``no_certificate``: the error without one)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Forbidden("missing migration token", "send it as 'Authorization: Bearer <token>'")
    fingerprint = peer_fingerprint(request)
    if fingerprint is None:
        raise Forbidden(no_certificate)
    return token.strip(), fingerprint


def _redeem(request: web.Request, channel: str, consume: bool = True) -> Any:
    token, fingerprint = bearer_token(
        request, "the migration endpoints need the target agent's TLS client certificate"
    )
    agent = request.app[AGENT_KEY]
    return agent.migrations.redeem(request.match_info["id"], channel, token, fingerprint, consume)


@routes.get("/1.0/migrations/{id}/image")
async def migration_image(request: web.Request) -> web.StreamResponse:
    """The container's base image tarball, byte for byte (channel ``image``)."""
    agent = request.app[AGENT_KEY]
    try:
        migration = _redeem(request, "image")
        if not migration.base_image:
            from orchapi.errors import NotFound

            raise NotFound(f"container {migration.container} has no base image")
        path = await agent.blocking(agent.images.tarball_path, migration.base_image)
    except OrchError as exc:
        return refusal(exc)
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


@routes.get("/1.0/migrations/{id}/fs")
async def migration_fs(request: web.Request) -> web.StreamResponse:
    """The websocket the volumes stream over (channel ``fs``); see hostagent/migration/protocol.py."""
    agent = request.app[AGENT_KEY]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=HEARTBEAT, compress=False)
    try:
        _redeem(request, "fs", consume=False)  # who may ask comes first; a plain GET must not burn it
        if not ws.can_prepare(request).ok:
            raise BadRequest("expected a websocket upgrade")
        migration = _redeem(request, "fs")
    except OrchError as exc:
        return refusal(exc)
    await ws.prepare(request)
    task = asyncio.current_task()
    assert task is not None
    migration.sessions.add(task)
    try:
        await SourceSession(agent, migration, ws).run()
    finally:
        migration.sessions.discard(task)
    return ws
