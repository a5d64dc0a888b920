"""Step 1 — verify_target: check everything that can be checked before any data moves, take the locks.

The target agent must be reachable and trust us, the target name free (or existing and stopped, for
``--refresh``), and the two agents must share a transfer method (the target's free space is checked by
issue_token against the size the source declares for the migration: no extra request, no extra walk of
the source's tree). The source must be stopped unless a snapshot is copied; ``move --stateless`` stops
it here (and rollback starts it again if the move fails).

Hosts are compared by identity (the agent's certificate fingerprint, :mod:`orchestrator.hostid`), not by
remote name: a cordon made through any name of the target holds, and a copy or move of a container onto
itself under another name of its host (which, as a refresh or move, would overwrite or delete it) is
refused. The target agent enforces its cordon too; this check only fails earlier and names the remote.
"""

from __future__ import annotations

import time

from orchapi.api.containers import StateChange
from orchapi.errors import Conflict, Forbidden, NotFound
from orchestrator.clientconfig import ClientConfig
from orchestrator.evacuation.hosts import HostStates
from orchestrator.hostid import identify
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext, lock_targets
from orchestrator.tasks.common import source, target


def check_hosts(ctx: StepContext, job: Job) -> None:
    """The target host may receive containers, and the target is not the source under another name."""
    s, config = job.state, ClientConfig.current()
    target_id = identify(config, s.target_remote)
    if not job.options.get("restore"):
        states = HostStates(ctx.redis)
        states.adopt_legacy(target_id, [s.target_remote])
        states.check_schedulable(target_id, s.target_remote)
    if s.target_name == s.source_name and identify(config, s.source_remote) == target_id:
        raise Conflict(
            f"{job.source} and {job.target} are the same container "
            f"({s.source_remote} and {s.target_remote} name the same host)",
            "pick another name or another host",
        )


def verify(ctx: StepContext, job: Job) -> None:
    s, opts = job.state, job.options
    check_hosts(ctx, job)
    src, tgt = source(ctx, job), target(ctx, job)
    container = src.container(s.source_name)
    if s.source_snapshot:
        src.snapshot(s.source_name, s.source_snapshot)
    target_info = tgt.server()
    if not target_info.trusted:
        raise Forbidden(f"remote {s.target_remote} does not trust this client")
    HostStates.check_agent_status(target_info.config.get("orch.status", ""), s.target_remote)
    common = set(src.server().transfer_methods) & set(target_info.transfer_methods)
    if not common:
        raise Conflict(f"{job.source} and {s.target_remote}: the agents share no transfer method")
    try:
        existing = tgt.container(s.target_name)
    except NotFound:
        existing = None
    if existing is not None and not opts.get("refresh"):
        raise Conflict(
            f"container {job.target} already exists",
            "use --refresh to update it, or pick another name"
            if job.kind == "copy"
            else f"pick another name, or delete it first: orch delete {job.target}",
        )
    if existing is not None and existing["status"] == "Running":
        raise Conflict(f"container {job.target} is running", "stop it before refreshing it")
    running = container["status"] == "Running" and not s.source_snapshot
    if running and not (job.kind == "move" and opts.get("stateless")) and not s.source_was_running:
        raise Conflict(
            f"container {job.source} is running",
            f"stop it first (orch stop {job.source}), use --stateless to stop, move and restart it"
            if job.kind == "move"
            else f"stop it first (orch stop {job.source}), or copy a snapshot of it "
            f"(orch snapshot {job.source} SNAP, then orch copy {job.source}/SNAP ...)",
        )
    now = time.time()
    if not ctx.locks_fresh(job, now):  # taken by the submit, but the job may have queued for long
        for host, name, label in lock_targets(job):
            ctx.locks.acquire(job.id, host, name, ctx.settings.lock_lease, label=label)
        ctx.jobs.update(job.id, locks_ts=now)
        job.locks_ts = now
    # what issue_token needs of the target, so that it asks nothing again: its certificate (which the
    # source's token is scoped to) and its free space (checked against the size the source declares)
    ctx.jobs.update_state(
        job,
        target_preexisted=existing is not None,
        methods=sorted(common),
        target_certificate=target_info.certificate,
        target_free=target_info.storage_free,  # None: not reported, not checked
    )
    if running:
        ctx.jobs.update_state(job, source_was_running=True)
        try:
            src.change_state(s.source_name, StateChange("stop", timeout=30))
        except Conflict:
            # stopped between the status read and the stop: by an earlier delivery of this very step
            # whose worker died while the agent was stopping the container. Stopped is what is wanted.
            if src.container(s.source_name)["status"] != "Stopped":
                raise
