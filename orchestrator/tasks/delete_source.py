"""Step 5 — delete_source (move only): delete the source, only after the target verified its copy.

For ``--stateless`` moves (and containers that ran before the move), the target is started afterwards.
From the moment the source is deleted the target holds the only copy, so nothing after that point may
roll back: a failure to start the target is reported, the container stays on the target.
"""

from __future__ import annotations

from orchapi.api.containers import StateChange
from orchapi.errors import NotFound, OrchError
from orchestrator.evacuation.hosts import HostStates
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import source, target


def delete(ctx: StepContext, job: Job) -> None:
    s = job.state
    if not s.verified:
        raise OrchError("refusing to delete the source: the target copy was not verified")
    if not s.source_deleted:
        try:
            source(ctx, job).delete_container(s.source_name)
        except NotFound:
            pass  # an earlier delivery of this step deleted it
        ctx.jobs.update_state(job, source_deleted=True)
    if s.source_was_running:
        tgt = target(ctx, job)
        if tgt.container(s.target_name)["status"] != "Running":
            tgt.change_state(s.target_name, StateChange("start"))
    origin = job.options.get("origin")
    if origin:  # an evacuation: remember where the container came from, for `orch restore`
        HostStates(ctx.redis).record_origin(
            origin,
            s.target_name,
            s.target_remote,
            bool(s.source_was_running),
            job.id,
            bool(job.options.get("allow_privileged")),
        )
