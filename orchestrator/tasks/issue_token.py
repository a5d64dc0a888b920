"""Step 2 — issue_token: the source agent issues one-time migration secrets for the target agent.

The source stores them hashed, scoped to this container (and snapshot list) and to the target agent's
certificate, valid for one connection within a short TTL. The worker keeps them in Redis beside the job
(never in task arguments), with the source's certificate, which the target will pin.
"""

from __future__ import annotations

from orchapi.api.migration import MigrationRequest
from orchapi.errors import InsufficientStorage, OrchError
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import reachable_url, source, target
from orchestrator.transfers.choice import modes_for

TOKEN_TTL = 120


def issue(ctx: StepContext, job: Job) -> None:
    s = job.state
    if s.migration_id and ctx.jobs.secrets(job.id):
        return  # issued by an earlier delivery of this step
    issue_migration(ctx, job)


def reissue(ctx: StepContext, job: Job) -> Job:
    """New secrets for a job whose migration was spent or expired (a change of transfer mode): the
    old migration is revoked first; the job as it is now."""
    old = job.state.migration_id
    if old:
        try:
            source(ctx, job).revoke_migration(old)
        except OrchError:
            pass  # forgotten or gone already: it can no longer be used either way
    issue_migration(ctx, job)
    return ctx.jobs.get(job.id)


def issue_migration(ctx: StepContext, job: Job) -> None:
    """Ask the source for a migration of the job's container to the target's certificate."""
    s = job.state
    src = source(ctx, job)
    mode = s.mode or modes_for(ctx, job)[0]
    request = MigrationRequest(
        target_certificate=s.target_certificate or target(ctx, job).server().certificate,
        mode=mode,
        snapshot=s.source_snapshot or None,
        instance_only=bool(job.options.get("instance_only")),
        ttl=TOKEN_TTL,
        # the source paces what it sends to it
        bwlimit=int(job.options["bwlimit"]) if job.options.get("bwlimit") else None,
    )
    migration = src.create_migration(s.source_name, request)
    ctx.jobs.set_secrets(job.id, migration.secrets)
    base_url = reachable_url(s.source_remote, src)
    ctx.jobs.update_state(
        job,
        migration_id=migration.id,
        migration_url=f"{base_url}/1.0/migrations/{migration.id}",
        source_certificate=migration.certificate,
        base_image=migration.base_image,
        snapshots=migration.snapshots,
        size=migration.size,
        migration_spent=False,
        mode=mode,
    )
    ctx.jobs.update(job.id, bytes_total=migration.size)
    size, free = migration.size, s.target_free
    if free is not None and not s.target_preexisted and size > free:
        # before any byte moves (the target would refuse beyond its free space, but later); the migration
        # is recorded already, so the rollback revokes its secrets
        raise InsufficientStorage(
            f"not enough space on {s.target_remote}: {job.source} needs {size} bytes with its "
            f"snapshots, {s.target_remote} has {free} bytes free",
            "free space on the target, or move without snapshots (--instance-only)",
        )
