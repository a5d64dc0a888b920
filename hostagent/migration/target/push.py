"""Push mode, target side: a sink the peer dials, then the same reception as a pull.

The operation is created with the sink's secret in its metadata (for the worker, which hands it to the
source agent, or uses it itself when it relays), waits up to :data:`CONNECT_WAIT` for the peer's
websocket on ``GET /1.0/sinks/<id>/fs`` (hostagent/api/sinks.py), and then converses as a pull does
(:func:`~hostagent.migration.target.session.converse`), only without data links: a target that is
pushed to may have no way to the source.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hostagent.migration.target.request import PullSpec
from hostagent.migration.target.session import converse
from hostagent.operations import Operation
from orchapi.errors import PeerUnreachable

#: how long the sink waits for the peer's connection (the token's lifetime)
CONNECT_WAIT = 60


def open_sink(agent: Any, name: str, spec: PullSpec, resources: dict[str, list[str]], key: str) -> Operation:
    """The sink for ``name`` and the operation that receives through it."""
    sink, token = agent.sinks.open(name, spec.source.fingerprint, CONNECT_WAIT)
    if agent.ssl_context is not None:
        # the peer presents this certificate as its client certificate: the handshake must accept it
        agent.ssl_context.load_verify_locations(cadata=spec.source.certificate)

    async def work(op: Operation) -> dict[str, Any]:
        try:
            try:
                ws = await asyncio.wait_for(asyncio.shield(sink.connected), CONNECT_WAIT)
            except TimeoutError:
                raise PeerUnreachable(
                    f"nothing connected to push container {name} within {CONNECT_WAIT} s",
                    "the source agent could not reach this agent: try --mode pull or relay",
                ) from None
            op.metadata.pop("secrets", None)  # used: no one else may take it
            async with agent.container_lock(name):
                await agent.blocking(agent.runtime.import_check, name, spec.refresh)
                return await converse(agent, op, name, spec, ws)
        finally:
            agent.sinks.close(sink)

    op = agent.operations.start(f"Receiving container {name} (pushed)", work, resources, key=key)
    op.progress(sink=sink.id, secrets={"fs": token}, mode="push")
    return op
