"""Pull mode: the target agent dials the source's migration and pulls the container (LXD's default)."""

from __future__ import annotations

from typing import Any

from orchapi.api.receive import ReceiveSource
from orchapi.errors import OrchError
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import target
from orchestrator.transfers.follow import POLL, follow


def receive_source(job: Job, mode: str, **more: Any) -> ReceiveSource:
    """What the target is told of the container to receive, in ``mode``."""
    s = job.state
    values: dict[str, Any] = {
        "certificate": s.source_certificate,
        "base_image": s.base_image if not s.image_missing else "",
        "refresh": bool(job.options.get("refresh")),
        "method": job.options.get("method") or None,
        # the operator's opt-in for this job; the target decides everything else itself
        "allow_privileged": bool(job.options.get("allow_privileged")),
        "compression": job.options.get("compression") or "auto",
    }
    return ReceiveSource(mode=mode, **{**values, **more})


def start(ctx: StepContext, job: Job) -> str:
    s = job.state
    secret = ctx.jobs.secrets(job.id).get("fs")
    if not secret:
        raise OrchError("the migration secrets expired before the transfer started; run the job again")
    source = receive_source(job, "pull", operation=s.migration_url, secrets={"fs": secret})
    operation = target(ctx, job).receive_container(s.target_name, source)["operation"]
    ctx.jobs.update_state(job, target_op=operation, migration_spent=True)
    return operation


def transfer(ctx: StepContext, job: Job) -> dict[str, Any]:
    """Start (or, redelivered, re-attach to) the target's pull and follow it to its end."""
    operation = job.state.target_op or start(ctx, job)
    return follow(ctx, job, target(ctx, job, timeout=POLL + 30), operation)
