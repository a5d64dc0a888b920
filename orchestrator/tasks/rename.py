"""The one step of a move within one remote: a rename on the agent, no data transfer."""

from __future__ import annotations

from orchapi.errors import Conflict
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext, lock_targets
from orchestrator.tasks.common import source


def rename_container(ctx: StepContext, job: Job) -> None:
    s = job.state
    src = source(ctx, job)
    for host, name, label in lock_targets(job):
        ctx.locks.acquire(job.id, host, name, ctx.settings.lock_lease, label=label)
    if src.container(s.source_name)["status"] == "Running":
        raise Conflict(f"container {job.source} is running", "stop it before renaming it")
    src.rename_container(s.source_name, s.target_name)
