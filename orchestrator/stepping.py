"""What every step of a job's chain does around its own work.

A step: loads its job; stops if another chain runs the job (a duplicated hand-off, see
orchestrator/dispatch.py); skips itself if it already completed (a redelivered or duplicated message); stops
if the job was cancelled or finished; records the current step and attempts; renews the job's container
locks; runs; on a transient error (agent unreachable, 503, timeout) retries with exponential backoff and
full jitter; on a permanent error, or when retries run out, rolls the job back and marks it failed. Only
the first delivery that completes a step lets the chain go on, so a step never runs its successor twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore

from orchapi.errors import OrchError, Unavailable
from orchestrator.chain import is_last
from orchestrator.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, now_iso
from orchestrator.stepcontext import Cancelled, StepContext, Superseded, lock_targets
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


__all__ = [
    "Cancelled",
    "StepContext",
    "StepRun",
    "Superseded",
    "backoff",
    "complete",
    "finish_with_rollback",
    "lock_targets",
    "step",
]


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS style): uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


def step(name: str) -> Callable[[Callable[[StepContext, Job], Any]], Callable[..., str]]:
    """Wrap a step function ``fn(ctx, job)`` into a bound Celery task body ``(self, job_id, label)``."""

    def decorate(fn: Callable[[StepContext, Job], Any]) -> Callable[..., str]:
        @functools.wraps(fn)
        def body(task: Task, job_id: str, label: str = "") -> str:
            return StepRun(task, StepContext.get(), name, job_id).execute(fn)

        return body

    return decorate


class StepRun:
    """One delivery of one step of one job: the checks before it may work, its work, and its end."""

    def __init__(self, task: Task, ctx: StepContext, name: str, job_id: str) -> None:
        self.task, self.ctx, self.name, self.job_id = task, ctx, name, job_id
        self.run_id = ctx.runs.new_run()

    def execute(self, fn: Callable[[StepContext, Job], Any]) -> str:
        ctx, job_id = self.ctx, self.job_id
        if not ctx.runs.take(job_id, self.run_id):
            # another delivery of this step runs it now (its worker lost Redis a while, or this is a
            # retry's copy): wait; it will have done the step, or its lease runs out if its worker died
            raise self.task.retry(countdown=ctx.settings.visibility_timeout / 2, max_retries=None)
        try:
            return self.run_leased(fn)
        except redis.RedisError as exc:
            # Redis was away longer than the client's patience: nothing can be recorded, so nothing is;
            # the step runs again once Redis is back (its message is still the broker's)
            log.warning("job %s step %s: Redis unreachable (%s); it runs again when Redis is back",
                        job_id, self.name, exc)  # fmt: skip
            raise self.task.retry(
                exc=exc, countdown=ctx.settings.visibility_timeout, max_retries=None
            ) from None
        finally:
            ctx.run = ctx.task = None
            with contextlib.suppress(redis.RedisError):
                ctx.runs.release(job_id, self.run_id)

    def admitted(self, job: Job) -> bool:
        """Whether this delivery may run: the job is not over, this chain runs it (a hand-off delivered
        twice starts two chains: only one runs), and the step is not done (a duplicate of a completed
        step: its successor is on its way already). Answered from the record just read, but for the
        first step's claim of the job."""
        request = self.task.request
        return (
            not job.finished
            and self.ctx.jobs.claim_chain(job.id, request.root_id or request.id, job)
            and self.name not in job.steps_done
        )

    def run_leased(self, fn: Callable[[StepContext, Job], Any]) -> str:
        """The step's work, once it holds the job's run lease."""
        ctx, job_id = self.ctx, self.job_id
        # read once the lease is held: no other run changes it meanwhile, so this copy, kept up to date
        # by the step's own writes (begin, update_state), is the record for the rest of the step
        job = ctx.jobs.get(job_id)
        if not self.admitted(job):
            raise Ignore()
        if job.cancel_requested:
            finish_with_rollback(ctx, job, CANCELLED, "cancelled by the user")
            raise Ignore()
        self.hold_slots(job)
        self.begin(job)
        try:
            fn(ctx, job)
        except Superseded:
            log.warning(
                "job %s step %s: another run of this step took over; this one stops", job_id, self.name
            )
            raise Ignore() from None
        except redis.RedisError:
            raise
        except Cancelled:
            finish_with_rollback(ctx, ctx.jobs.get(job_id), CANCELLED, "cancelled by the user")
            _show_end(self.task, job_id, "cancelled by the user; rolled back, the source is kept")
            # the task fails (an expected error, one log line) rather than being ignored: monitors then
            # show it ended; an ignored task stays PROGRESS in Flower forever, and Celery ranks REVOKED
            # below the custom PROGRESS state, so only FAILURE can end it
            raise JobCancelled(f"job {job_id} cancelled by the user") from None
        except Unavailable as exc:
            raise self.transient(exc) from None
        except OrchError as exc:
            self.fail(f"{self.name}: {exc}", f"failed: {exc}")
            raise
        except Exception as exc:
            log.exception("job %s step %s failed", job_id, self.name)
            self.fail(f"{self.name}: internal error: {exc}")
            raise
        if is_last(job.kind, self.name):
            # the job's end before the step's mark: a redelivery after a death in between finds the
            # job finished (the other way round it would find the step done and the job never ended)
            complete(ctx, job)
        if not ctx.jobs.mark_step_done(job_id, self.name, self.run_id):
            raise Ignore()
        if job.error:  # an earlier attempt's "retrying: …"
            ctx.jobs.update(job_id, error="")
        return job_id

    def hold_slots(self, job: Job) -> None:
        """The job's concurrency slots, or a wait for them (not counted as a failure)."""
        if not self.ctx.take_slots(job):
            fields: dict[str, Any] = {"stage": "waiting for a slot"}
            # a wait may be long (an evacuation's queue): keep its containers
            fields.update(self.renew_locks_when_due(job))
            self.ctx.jobs.update(job.id, **fields)
            raise self.task.retry(countdown=random.uniform(0.2, 1.0), max_retries=None)

    def begin(self, job: Job) -> None:
        """Record the step as running here (one write), and renew the job's locks when due."""
        fields: dict[str, Any] = {"status": RUNNING, "step": self.name, "attempts": job.attempts + 1}
        fields.update(stage="", worker=self.task.request.hostname or "")
        if not job.started_at:
            fields["started_at"] = now_iso()
            fields["started_ts"] = time.time()
        self.ctx.task = self.task  # the running task, for steps that send events (task-progress)
        self.ctx.run = self.run_id  # checked with every renewal of the locks (StepContext.renew_locks)
        fields.update(self.renew_locks_when_due(job))
        self.ctx.jobs.update(job.id, **fields)
        for name, value in fields.items():  # the step's copy of the record, as written
            setattr(job, name, value)

    def renew_locks_when_due(self, job: Job) -> dict[str, float]:
        """Renew the job's container locks and slots once a quarter of their lease has gone by since
        the last renewal; the record's field saying when, if all were still the job's."""
        now = time.time()
        if self.ctx.locks_fresh(job, now):
            return {}
        if self.ctx.renew_locks(job):
            return {"locks_ts": now}
        log.warning("job %s step %s: a lock or slot of the job had run out", job.id, self.name)
        return {}

    def transient(self, exc: Unavailable) -> BaseException:
        """A retry with backoff while the step's budget of transient failures lasts; then the end."""
        ctx = self.ctx
        failures = ctx.jobs.count_failure(self.job_id, self.name)
        if failures <= ctx.settings.max_retries:
            delay = backoff(failures - 1, ctx.settings.retry_base, ctx.settings.retry_cap)
            log.warning("job %s step %s: %s; retrying in %.1fs", self.job_id, self.name, exc, delay)
            ctx.jobs.update(self.job_id, error=f"retrying: {exc}")
            return self.task.retry(exc=exc, countdown=delay, max_retries=None)
        self.fail(f"{self.name}: {exc} (gave up after retries)", f"failed: {exc} (gave up after retries)")
        return exc

    def fail(self, reason: str, shown: str | None = None) -> None:
        finish_with_rollback(self.ctx, self.ctx.jobs.get(self.job_id), FAILED, reason)
        if shown:
            _show_end(self.task, self.job_id, shown)


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
