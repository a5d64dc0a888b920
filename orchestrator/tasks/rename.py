"""The one step of a move within one remote: a rename on the agent, no data transfer."""

from __future__ import annotations

from orchapi.errors import Conflict
from orchestrator.celeryapp import app
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext, StepTask, complete, lock_targets, step
from orchestrator.tasks.common import source


def rename_container(ctx: StepContext, job: Job) -> None:
    s = job.state
    src = source(ctx, job)
    for host, name, label in lock_targets(job):
        ctx.locks.acquire(job.id, host, name, ctx.settings.lock_lease, label=label)
    if src.get(f"/1.0/containers/{s['source_name']}")["status"] == "Running":
        raise Conflict(f"container {job.source} is running", "stop it before renaming it")
    src.run("POST", f"/1.0/containers/{s['source_name']}", json={"name": s["target_name"]})
    complete(ctx, ctx.jobs.get(job.id))


rename = app.task(base=StepTask, bind=True, name="orch.rename")(step("rename")(rename_container))
