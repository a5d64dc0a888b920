"""Step 4 — transfer_delta: the target agent receives the container from the source agent and verifies it.

Who dials whom is the job's transfer mode (orchestrator/transfers/: pull, push, relay; auto tries them
in turn when the agents cannot connect). The transfer is an operation inside the target agent (pre-fill
from the image, then snapshots oldest to newest and the current state as deltas, by btrfs send/receive,
rsync or tar, then a manifest check). The worker only starts it and follows it, copying its progress
into the job record every second. Its URL is saved before following, so if this worker dies, the
redelivered step re-attaches to the same operation instead of starting a second transfer.
"""

from __future__ import annotations

import logging
from typing import Any

from orchapi.errors import OrchError, PeerUnreachable
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.issue_token import reissue
from orchestrator.transfers import pull, push, relay
from orchestrator.transfers.choice import modes_for

log = logging.getLogger(__name__)


def run_modes(ctx: StepContext, job: Job) -> dict[str, Any]:
    """The transfer in the job's mode; under ``auto`` the next mode when the agents could not connect."""
    order = modes_for(ctx, job)
    mode = job.state.mode if job.state.mode in order else order[0]
    while True:
        ctx.jobs.update_state(job, mode=mode)
        if mode != "relay" and job.state.migration_spent and not job.state.target_op:
            # a new transfer (a retry, another mode) needs unspent secrets; relay has them issued to
            # the worker's own certificate itself
            job = reissue(ctx, job)
        try:
            return TRANSFER[mode](ctx, job)
        except PeerUnreachable as exc:
            ctx.jobs.update_state(job, target_op=None, source_op=None)
            later = order[order.index(mode) + 1 :]
            if not later:
                raise
            log.info("job %s: %s failed (%s); trying %s", job.id, mode, exc, later[0])
            mode = later[0]


TRANSFER = {"pull": pull.transfer, "push": push.transfer, "relay": relay.transfer}


def transfer(ctx: StepContext, job: Job) -> None:
    result = run_modes(ctx, job)
    ctx.jobs.update_state(
        job,
        verified=bool(result.get("verified")),
        method=result.get("method", ""),
        files=result.get("files", 0),
        bytes_received=result.get("bytes_received", 0),
        bytes_sent=result.get("bytes_sent", 0),
        # what compression and the limits did (payload_bytes: the streams before compression)
        compression=result.get("compression", ""),
        payload_bytes=result.get("payload_bytes"),
        throttled_seconds=result.get("throttled_seconds", 0.0),
        # what an interrupted earlier attempt spared this one (the target resumed what it had kept)
        resumed_volumes=result.get("resumed_volumes", []),
        skipped_bytes=result.get("skipped_bytes", 0),
    )
    if not result.get("verified"):
        raise OrchError("the target did not verify the copy; the source is kept")
