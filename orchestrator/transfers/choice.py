"""Which modes a job tries: its ``--mode``, or under ``auto`` every mode both agents take part in
(their ``migration.modes``, orchapi/modes.py), in the order pull, push, relay."""

from __future__ import annotations

from typing import Any

from orchapi.errors import Forbidden
from orchapi.modes import ALL, MODES_KEY, parse_modes
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import source, target


def order(wish: str, source_config: dict[str, Any], target_config: dict[str, Any]) -> tuple[str, ...]:
    """The modes to try, in turn (an explicit wish alone: the agent refuses it itself if it must)."""
    if wish != "auto":
        return (wish,)
    theirs = [parse_modes(str(c.get(MODES_KEY) or "")) for c in (source_config, target_config)]
    both = tuple(m for m in ALL if all(m in t for t in theirs))
    if not both:
        raise Forbidden(
            "the two agents share no transfer mode "
            f"(the source takes {','.join(theirs[0])}, the target {','.join(theirs[1])})",
            f"allow one on either with `orch config set <host>: {MODES_KEY} ...`",
        )
    return both


def modes_for(ctx: StepContext, job: Job) -> tuple[str, ...]:
    """The job's modes to try, read once from both agents and kept on the job."""
    known = job.state.modes
    if known:
        return tuple(known)
    configs = [side(ctx, job).server().config for side in (source, target)]
    modes = order(job.options.get("mode") or "auto", *configs)
    ctx.jobs.update_state(job, modes=list(modes))
    return modes
