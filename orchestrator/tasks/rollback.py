"""Undo a failed or cancelled job without ever touching the source's data.

In order: revoke the migration secrets, cancel the target's transfer operation (the target deletes its
staging area), delete a target container this job created (never one that existed before, under
``--refresh``), for a cancelled job discard what the target kept to resume the transfer, and start the
source again if the job stopped it. Once the source is deleted, the
target holds the only copy and nothing is undone.
"""

from __future__ import annotations

import logging

from orchapi.api.containers import StateChange
from orchapi.errors import NotFound, OrchError
from orchestrator.jobs import Job
from orchestrator.stepcontext import StepContext
from orchestrator.suspended import discard_suspended
from orchestrator.tasks.common import source, target

log = logging.getLogger(__name__)


def _quietly(what: str, fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except NotFound:
        pass
    except OrchError as exc:
        log.warning("rollback: %s failed: %s", what, exc)


def rollback(ctx: StepContext, job: Job) -> None:
    s = job.state
    if s.source_deleted:
        return
    if not (s.migration_id or s.target_op or s.source_was_running):
        return  # nothing was done on any agent yet (it failed in verify_target): nothing to undo
    src, tgt = source(ctx, job), target(ctx, job)
    if s.migration_id:
        _quietly("revoking the migration", src.revoke_migration, s.migration_id)
    if s.target_op and _transfer_created_target(tgt, s.target_op) and not s.target_preexisted:
        _delete_target(tgt, s.target_name)
    if job.cancel_requested and s.migration_id:
        # called off: what the target kept of an interrupted attempt to resume it goes too (a failure
        # keeps it, for the retry or `orch jobs resume`, until the target's migration.resume_ttl)
        discard_suspended(tgt, s.target_name)
    if s.source_was_running:
        _quietly("restarting the source", src.change_state, s.source_name, StateChange("start"))


def _transfer_created_target(tgt, operation: str) -> bool:  # type: ignore[no-untyped-def]
    """Cancel the transfer if it still runs; True only if it had committed a container.

    A failed or cancelled transfer removes its own staging area on the target, and a container of that
    name which the transfer did not create (someone else's) must never be deleted.
    """
    _quietly("cancelling the transfer", tgt.cancel_operation, operation)
    try:
        op = tgt.operation_wait(operation, 30)
    except OrchError:
        return False
    return op.get("status") == "Success"


def _delete_target(tgt, name: str) -> None:  # type: ignore[no-untyped-def]
    """Delete the container this job created on the target (stopping it first if needed)."""
    try:
        status = tgt.container(name)["status"]
    except OrchError:
        return
    if status == "Running":
        _quietly("stopping the target", tgt.change_state, name, StateChange("stop", force=True))
    _quietly("deleting the partial target", tgt.delete_container, name)
