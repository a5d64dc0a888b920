"""What every step of a job's chain does around its own work.

A step: loads its job; stops if another chain runs the job (a duplicated hand-off, see
orchestrator/dispatch.py); skips itself if it already completed (a redelivered or duplicated message); stops
if the job was cancelled or finished; records the current step and attempts; renews the job's container
locks; runs; on a transient error (agent unreachable, 503, timeout) retries with exponential backoff and
full jitter; on a permanent error, or when retries run out, rolls the job back and marks it failed. Only
the first delivery that completes a step lets the chain go on, so a step never runs its successor twice.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from orchapi.errors import OrchError, Unavailable
from orchestrator.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, now_iso
from orchestrator.stepcontext import Cancelled, StepContext, lock_targets
from orchestrator.tasks.rollback import rollback

log = logging.getLogger(__name__)


class JobCancelled(OrchError):
    """The task's end when its job was cancelled (the job's status says cancelled)."""

    status = 499


class StepTask(Task):
    """The Celery task class of every step.

    A user's error (a container that does not exist, a name taken, a refused policy) is the job's
    outcome, recorded on the job with its one-line message: Celery logs it as an *expected* failure,
    one line at INFO, not a traceback. Retries are the step's own (transient errors, busy slots).
    """

    throws = (OrchError,)
    max_retries = None


__all__ = ["Cancelled", "StepContext", "backoff", "complete", "finish_with_rollback", "lock_targets", "step"]


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS style): uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


def step(name: str) -> Callable[[Callable[[StepContext, Job], Any]], Callable[..., str]]:
    """Wrap a step function ``fn(ctx, job)`` into a bound Celery task body ``(self, job_id, label)``."""

    def decorate(fn: Callable[[StepContext, Job], Any]) -> Callable[..., str]:
        @functools.wraps(fn)
        def run(task: Task, job_id: str, label: str = "") -> str:
            ctx = StepContext.get()
            job = ctx.jobs.get(job_id)
            if job.finished:
                raise Ignore()
            if not ctx.jobs.claim_chain(job_id, task.request.root_id or task.request.id):
                raise Ignore()  # a second chain for this job (a hand-off delivered twice): only one runs
            if ctx.jobs.step_done(job_id, name):
                raise Ignore()  # a duplicate of a completed step: its successor is already on its way
            if job.cancel_requested:
                finish_with_rollback(ctx, job, CANCELLED, "cancelled by the user")
                raise Ignore()
            if not ctx.take_slots(job):
                # all slots busy: wait without counting it as a failure
                ctx.jobs.update(job_id, stage="waiting for a slot")
                raise task.retry(countdown=random.uniform(0.2, 1.0), max_retries=None)
            fields: dict[str, Any] = {"status": RUNNING, "step": name, "attempts": job.attempts + 1}
            fields["stage"] = ""
            if not job.started_at:
                fields["started_at"] = now_iso()
                fields["started_ts"] = time.time()
            ctx.jobs.update(job_id, **fields)
            ctx.renew_locks(job)
            ctx.task = task  # the running task, for steps that send events (task-progress)
            try:
                fn(ctx, ctx.jobs.get(job_id))
            except Cancelled:
                finish_with_rollback(ctx, ctx.jobs.get(job_id), CANCELLED, "cancelled by the user")
                _show_end(task, job_id, "cancelled by the user; rolled back, the source is kept")
                # the task fails (an expected error, one log line) rather than being ignored: monitors
                # then show it ended; an ignored task stays PROGRESS in Flower forever, and Celery
                # ranks REVOKED below the custom PROGRESS state, so only FAILURE can end it
                raise JobCancelled(f"job {job_id} cancelled by the user") from None
            except Unavailable as exc:
                failures = ctx.transient_failures(job_id, name)
                if failures <= ctx.settings.max_retries:
                    delay = backoff(failures - 1, ctx.settings.retry_base, ctx.settings.retry_cap)
                    log.warning("job %s step %s: %s; retrying in %.1fs", job_id, name, exc, delay)
                    ctx.jobs.update(job_id, error=f"retrying: {exc}")
                    raise task.retry(exc=exc, countdown=delay, max_retries=None) from None
                finish_with_rollback(
                    ctx, ctx.jobs.get(job_id), FAILED, f"{name}: {exc} (gave up after retries)"
                )
                _show_end(task, job_id, f"failed: {exc} (gave up after retries)")
                raise
            except OrchError as exc:
                finish_with_rollback(ctx, ctx.jobs.get(job_id), FAILED, f"{name}: {exc}")
                _show_end(task, job_id, f"failed: {exc}")
                raise
            except Exception as exc:
                log.exception("job %s step %s failed", job_id, name)
                finish_with_rollback(ctx, ctx.jobs.get(job_id), FAILED, f"{name}: internal error: {exc}")
                raise
            if not ctx.jobs.mark_step_done(job_id, name):
                raise Ignore()
            ctx.jobs.update(job_id, error="")
            return job_id

        return run

    return decorate


def _show_end(task: Task, job_id: str, text: str) -> None:
    """What monitors show as the failed task's result (else a transfer's last progress text stays)."""
    try:
        task.send_event("task-progress", retry=False, job_id=job_id, result=text)
    except Exception as exc:  # noqa: BLE001 - a monitor's view is not worth more than the job's end
        log.debug("job %s: end not shown to monitors: %s", job_id, exc)


def complete(ctx: StepContext, job: Job) -> None:
    """The last step succeeded: release the locks and mark the job succeeded."""
    ctx.release_locks(job)
    ctx.jobs.finish(job.id, SUCCEEDED)


def finish_with_rollback(ctx: StepContext, job: Job, status: str, reason: str) -> None:
    """Undo what the job did (never touching the source's data), release its locks, record the end."""
    if job.finished:
        return
    try:
        rollback(ctx, job)
    except Exception as exc:  # rollback must not hide the original reason
        log.exception("job %s: rollback failed", job.id)
        reason = f"{reason}; rollback incomplete: {exc}"
    ctx.release_locks(job)
    ctx.jobs.finish(job.id, status, reason)
