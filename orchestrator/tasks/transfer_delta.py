"""Step 4 — transfer_delta: the target agent pulls the container from the source agent and verifies it.

The transfer is an operation inside the target agent (pre-fill from the image, then snapshots oldest to
newest and the current state as deltas, by btrfs send/receive, rsync or tar, then a manifest check). The
worker only starts it and follows it, copying its progress into the job record every second. Its URL is
saved before following, so if this worker dies, the redelivered step re-attaches to the same operation
instead of starting a second transfer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchapi.errors import NotFound, OrchError, error_for_status
from orchestrator.celeryapp import app
from orchestrator.jobs import Job
from orchestrator.jobtext import progress_text, stage_words
from orchestrator.stepping import Cancelled, StepContext, StepTask, complete, step
from orchestrator.tasks.common import target

log = logging.getLogger(__name__)

POLL = 0.5  # job progress is refreshed at least this often while bytes move


def start_transfer(ctx: StepContext, job: Job) -> str:
    s = job.state
    secret = ctx.jobs.secrets(job.id).get("fs")
    if not secret:
        raise OrchError("the migration secrets expired before the transfer started; run the job again")
    body = {
        "name": s["target_name"],
        "source": {
            "type": "migration",
            "mode": "pull",
            "operation": s["migration_url"],
            "secrets": {"fs": secret},
            "certificate": s["source_certificate"],
            "base-image": s.get("base_image", ""),
            "refresh": bool(job.options.get("refresh")),
            "method": job.options.get("method") or None,
            # the operator's opt-in for this job; the target decides everything else itself
            "allow_privileged": bool(job.options.get("allow_privileged")),
            "compression": job.options.get("compression") or "auto",
        },
    }
    response = target(ctx, job).request("POST", "/1.0/containers", json=body).json()
    operation = response["operation"]
    ctx.jobs.update_state(job.id, target_op=operation)
    return operation


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


def follow(ctx: StepContext, job: Job, operation: str) -> dict[str, Any]:
    """Wait for the target's operation, mirroring its progress into the job; honour cancellation."""
    client = target(ctx, job, timeout=POLL + 30)
    #: the rate is measured from the first byte on (bytes / seconds since), so it is known at the
    #: first progress report after data flows and does not jump with every poll
    first: tuple[float, int] | None = None
    while True:
        try:
            op = client.call("GET", f"{operation}/wait", params={"timeout": POLL})
        except NotFound:
            raise OrchError("the target agent lost the transfer (was it restarted?)") from None
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
        if meta.get("method") and not job.state.get("method"):  # negotiated: shown while it runs
            job.state = ctx.jobs.update_state(job.id, method=str(meta["method"]))
        send_progress(ctx, job, fields)
        current = ctx.jobs.get(job.id)
        ctx.renew_locks(current)
        if op["status"] == "Success":
            return meta
        if op["status"] != "Running":
            raise error_for_status(int(op.get("err_code") or 500), op.get("err") or "transfer failed")
        if current.cancel_requested:
            try:
                client.call("DELETE", operation)
            except OrchError:
                pass
            raise Cancelled()


def transfer(ctx: StepContext, job: Job) -> None:
    operation = job.state.get("target_op") or start_transfer(ctx, job)
    result = follow(ctx, job, operation)
    ctx.jobs.update_state(
        job.id,
        verified=bool(result.get("verified")),
        method=result.get("method", ""),
        files=result.get("files", 0),
        bytes_received=result.get("bytes_received", 0),
        bytes_sent=result.get("bytes_sent", 0),
        # what compression and the limits did (payload_bytes: the streams before compression)
        compression=result.get("compression", ""),
        payload_bytes=result.get("payload_bytes"),
        throttled_seconds=result.get("throttled_seconds", 0.0),
    )
    if not result.get("verified"):
        raise OrchError("the target did not verify the copy; the source is kept")
    job = ctx.jobs.get(job.id)
    if job.kind == "copy":
        complete(ctx, job)


transfer_delta = app.task(base=StepTask, bind=True, name="orch.transfer_delta")(
    step("transfer_delta")(transfer)
)
