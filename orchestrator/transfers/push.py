"""Push mode: the target opens a sink for the source agent's certificate, the source dials it.

The worker asks the target for the sink (its one-time secret comes back in the operation), then asks
the source to push to it, naming first the address by which the worker reached the target and then
the others the target reports; it follows the target's operation and watches the source's, so either
side failing cancels the other.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from orchapi.api.receive import PushRequest
from orchapi.errors import OrchError, Unavailable
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import source, target
from orchestrator.transfers.follow import POLL, follow, operation_check
from orchestrator.transfers.pull import receive_source


def target_addresses(ctx: StepContext, job: Job) -> list[str]:
    """The target's HOST:PORT addresses, the one the worker reached first."""
    tgt = target(ctx, job)
    first = urlsplit(tgt.url).netloc if tgt.url.startswith("https://") else ""
    reported = tgt.server().addresses
    return list(dict.fromkeys([a for a in (first, *reported) if a]))


def sink_secret(answer: dict[str, Any]) -> dict[str, str]:
    """The sink's id and secret from the target's answer to opening it. A sink without its secret was
    dialed already: the same request of an earlier attempt, still receiving; the retry waits for it."""
    meta = (answer.get("metadata") or {}).get("metadata") or {}
    secret = (meta.get("secrets") or {}).get("fs")
    if not secret or not meta.get("sink"):
        raise Unavailable("an earlier attempt of this transfer is still being received; retrying")
    return {"sink": meta["sink"], "secret": secret}


def start(ctx: StepContext, job: Job) -> tuple[str, str]:
    """The target's sink operation and the source's push operation (both recorded on the job)."""
    s = job.state
    tgt = target(ctx, job)
    sink = tgt.receive_container(s.target_name, receive_source(job, "push"))
    sink_op = sink["operation"]
    ctx.jobs.update_state(job, target_op=sink_op)
    push = PushRequest(target_addresses(ctx, job), **sink_secret(sink))
    push_op = source(ctx, job).push_migration(s.migration_id, push)
    ctx.jobs.update_state(job, source_op=push_op, migration_spent=True)
    return sink_op, push_op


def transfer(ctx: StepContext, job: Job) -> dict[str, Any]:
    s = job.state
    if s.target_op and s.source_op:
        sink_op, push_op = s.target_op, s.source_op  # redelivered: the same push goes on
    else:
        sink_op, push_op = start(ctx, job)
    src = source(ctx, job, timeout=POLL + 30)
    try:
        return follow(ctx, job, target(ctx, job, timeout=POLL + 30), sink_op, operation_check(src, push_op))
    except BaseException:
        # the target failed or the job was cancelled: the source's push stops too (it would find the
        # connection gone soon, but need not send until then)
        with contextlib.suppress(OrchError):
            src.call("DELETE", push_op)
        raise
