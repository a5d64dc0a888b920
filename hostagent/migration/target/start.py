"""Starting a container's reception: a pull (this agent dials the source) or a push sink (the source,
or a worker relaying for it, dials this agent); ``POST /1.0/containers`` with a migration source."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hostagent.migration.modes import require_mode
from hostagent.migration.target.push import open_sink
from hostagent.migration.target.request import parse_pull
from hostagent.migration.target.session import pull_container
from hostagent.operations import RUNNING, SUCCESS, Operation


async def start_pull(agent: Any, name: str, source: dict[str, Any]) -> Operation:
    """Validate the request and start the pull (a taken name is refused now, before any connection)."""
    spec = parse_pull(source)
    require_mode(await agent.blocking(agent.trust.server_config), spec.mode)
    # The same request again (its single-use secret included) is a client that lost the answer, e.g.
    # a worker killed between asking and recording: it gets the pull it started, running or done, not
    # a refusal because the container it pulls now exists. After a failure it is a new attempt.
    request = json.dumps({"name": name, "source": source}, sort_keys=True, default=str)
    key = "pull:" + hashlib.sha256(request.encode()).hexdigest()
    if (started := _replayable(agent, key, spec.pushed)) is not None:
        return started
    await agent.blocking(agent.runtime.import_check, name, spec.refresh)
    if (started := _replayable(agent, key, spec.pushed)) is not None:  # asked twice at once: one pull
        return started
    resources = {"containers": [f"/1.0/containers/{name}"]}
    if spec.pushed:
        return open_sink(agent, name, spec, resources, key)

    async def work(op: Operation) -> dict[str, Any]:
        return await pull_container(agent, op, name, spec)

    return agent.operations.start(
        f"Copying container {name} from {spec.source.where}", work, resources, key=key
    )


def _replayable(agent: Any, key: str, sink: bool) -> Operation | None:
    """The operation the same request started, if it is to be given again: a pull's while it runs or
    after it succeeded (its request holds a single-use secret: the same one is the same attempt); a
    sink's only while it runs (its request holds no secret, so the next job's may be the same)."""
    op = agent.operations.find(key)
    if op is None:
        return None
    return op if op.status == RUNNING or (op.status == SUCCESS and not sink) else None
