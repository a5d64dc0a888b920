"""Following a transfer: the target's operation, mirrored into the job every poll; the other agent's
operation (push) watched beside it, so that one side failing cancels the other."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from orchapi.client import operation_error
from orchapi.errors import NotFound, OrchError, Unavailable
from orchestrator.connect import RemoteClient
from orchestrator.jobs import Job
from orchestrator.jobtext import progress_text, stage_words
from orchestrator.stepping import Cancelled, StepContext

log = logging.getLogger(__name__)

POLL = 0.5  # job progress is refreshed at least this often while bytes move
#: how often a long transfer renews its locks and checks its run lease (the heartbeat renews that
#: lease every visibility/4 s too; a lost one is noticed within this)
RENEW_EVERY = 2.0


def send_progress(ctx: StepContext, job: Job, fields: dict[str, Any]) -> None:
    """A Celery ``task-progress`` event for monitors (Flower shows the task as PROGRESS with these fields).

    Best effort: sent without retrying, and a failure (no broker, no task) never disturbs the transfer.
    """
    task = getattr(ctx, "task", None)
    if task is None:
        return
    try:
        task.send_event(
            "task-progress",
            retry=False,
            job_id=job.id,
            label=job.label,
            bytes_done=int(fields.get("bytes_done", 0)),
            bytes_total=int(fields.get("bytes_total", job.bytes_total)),
            rate=round(float(fields.get("rate", 0.0)), 1),
            stage=str(fields.get("stage", "")),
            # the "result" Flower shows in its task list while the task runs (see flowerview.py)
            result=f"{fields.get('stage') or 'transferring'}: "
            + progress_text(
                int(fields.get("bytes_done", 0)),
                int(fields.get("bytes_total", 0)),
                float(fields.get("rate", 0)),
            ),
        )
    except Exception as exc:  # monitoring must never break a transfer
        log.debug("job %s: task-progress event not sent: %s", job.id, exc)


def follow(
    ctx: StepContext,
    job: Job,
    client: RemoteClient,
    operation: str,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Wait for the target's ``operation``, mirroring its progress into the job; honour cancellation.
    ``check`` raises if the other side of the same transfer failed (the source's push operation, the
    worker's relay), checked every poll: the target's operation is then cancelled (it would only wait
    for its own timeout)."""
    #: the rate is measured from the first byte on (bytes / seconds since), so it is known at the
    #: first progress report after data flows and does not jump with every poll
    first: tuple[float, int] | None = None
    renewed = time.monotonic()  # the step renewed the locks (when due) as it began
    while True:
        try:
            op = client.operation_wait(operation, POLL)
        except NotFound:
            # the target agent restarted: its operation is gone (what it had received is suspended at
            # its start); the step's retry transfers again, with fresh secrets, and resumes it
            ctx.jobs.update_state(job, target_op=None, source_op=None)
            raise Unavailable(
                "the target agent lost the transfer (was it restarted?); transferring again"
            ) from None
        meta = op.get("metadata") or {}
        moved = int(meta.get("bytes_received", 0)) + int(meta.get("bytes_sent", 0))
        now = time.monotonic()
        if first is None and moved:
            first = (now - POLL, 0)  # the first bytes came during the last poll
        rate = (moved - first[1]) / max(now - first[0], 1e-3) if first else 0.0
        fields: dict[str, Any] = {"bytes_done": moved, "rate": rate, "stage": stage_words(meta)}
        # a total only when it is the bytes that will travel (whole volumes); a delta's size is not
        # known before it is sent, and a bar stuck at 33 % while deltas travel would mislead
        fields["bytes_total"] = int(meta.get("total_bytes") or 0) if meta.get("total_exact") else 0
        ctx.jobs.update(job.id, **fields)
        if meta.get("method") and not job.state.method:  # negotiated: shown while it runs
            ctx.jobs.update_state(job, method=str(meta["method"]))
        if meta.get("resumed_volumes") and job.state.resumed_volumes != meta["resumed_volumes"]:
            # what the target kept of an interrupted attempt: shown while it runs, not only at the end
            ctx.jobs.update_state(
                job, resumed_volumes=meta["resumed_volumes"], skipped_bytes=meta.get("skipped_bytes", 0)
            )
        send_progress(ctx, job, fields)
        if time.monotonic() - renewed > RENEW_EVERY:
            ctx.renew_locks(job)  # and check that this run still runs the step (Superseded)
            renewed = time.monotonic()
        if op["status"] == "Success":
            return _succeeded(ctx, job, meta)
        if op["status"] != "Running":
            # it is over and cleaned up after itself: a retry must start a new one, not re-read this end;
            # ``transfer_kept``: the target kept what it had verified, to be resumed (by the retry, or by
            # `orch jobs resume` should this be the last attempt)
            kept = bool(meta.get("suspended"))
            ctx.jobs.update_state(job, target_op=None, source_op=None, transfer_kept=kept)
            raise operation_error(op)
        if check is not None:
            try:
                check()
            except OrchError:
                _cancel(client, operation, resumable=True)  # what it received is kept for the retry
                ended = _ended(client, operation)
                if ended is not None and ended["status"] == "Success":
                    # it had verified and committed: the copy is good
                    return _succeeded(ctx, job, ended.get("metadata") or {})
                if ended is not None:  # over: a retry starts anew (with the other side's error)
                    kept = bool((ended.get("metadata") or {}).get("suspended"))
                    ctx.jobs.update_state(job, target_op=None, source_op=None, transfer_kept=kept)
                raise
        if ctx.jobs.cancel_requested(job.id):
            _cancel(client, operation)
            raise Cancelled()


def _succeeded(ctx: StepContext, job: Job, meta: dict[str, Any]) -> dict[str, Any]:
    """The target verified and committed: what an earlier attempt kept is the copy now."""
    if job.state.transfer_kept:
        ctx.jobs.update_state(job, transfer_kept=False)
    return meta


def operation_check(client: RemoteClient, operation: str) -> Callable[[], None]:
    """A check for :func:`follow`: raises once ``operation`` (on another agent) failed."""

    def check() -> None:
        try:
            op = client.call("GET", operation)
        except NotFound:
            raise OrchError("the source agent lost the push (was it restarted?)") from None
        if op["status"] in ("Failure", "Cancelled"):
            raise operation_error(op)

    return check


def _ended(client: RemoteClient, operation: str) -> dict[str, Any] | None:
    """The operation once it has ended (waiting up to 30 s), or None if it still runs or is gone."""
    try:
        op = client.operation_wait(operation, 30)
    except OrchError:
        return None
    return op if op["status"] != "Running" else None


def _cancel(client: RemoteClient, operation: str, resumable: bool = False) -> None:
    """Cancel the target's transfer; ``resumable``: it is interrupted (its other side failed), not
    called off, so the target keeps what it received for the retry to resume."""
    try:
        client.cancel_operation(operation, resumable)
    except OrchError:
        pass
