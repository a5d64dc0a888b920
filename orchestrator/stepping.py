"""What every step of a job's chain does around its own work.

A step: loads its job; skips itself if it already completed (a redelivered or duplicated message); stops
if the job was cancelled or finished; records the current step and attempts; renews the job's container
locks; runs; on a transient error (agent unreachable, 503, timeout) retries with exponential backoff and
full jitter; on a permanent error, or when retries run out, rolls the job back and marks it failed. Only
the first delivery that completes a step lets the chain go on, so a step never runs its successor twice.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from orchapi.errors import OrchError, Unavailable
from orchestrator.clientconfig import ClientConfig
from orchestrator.connect import RemoteClient, connect
from orchestrator.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, JobStore, now_iso
from orchestrator.limits import Semaphores
from orchestrator.locks import ContainerLocks
from orchestrator.redisserver import connect as redis_connect
from orchestrator.redisserver import redis_url
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The user asked to cancel the job."""


class StepContext:
    """Per-process handles a step needs (Redis, job store, locks, agent clients)."""

    _instance: StepContext | None = None

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.redis = redis_connect(redis_url(self.settings))
        self.jobs = JobStore(self.redis)
        self.locks = ContainerLocks(self.redis)
        self.semaphores = Semaphores(self.redis)
        self._local = threading.local()

    @property
    def task(self) -> Task | None:
        """The task this thread is running (the worker's threads pool runs several at once)."""
        return getattr(self._local, "task", None)

    @task.setter
    def task(self, value: Task | None) -> None:
        self._local.task = value

    @classmethod
    def get(cls) -> StepContext:
        if cls._instance is None:
            cls._instance = StepContext()
        return cls._instance

    def client(self, remote: str, timeout: float = 30.0) -> RemoteClient:
        """A client for ``remote``, kept per thread so that steps reuse its TLS connections.

        The config file is checked on every call, so remotes added or changed after the worker started
        are picked up (the cache is dropped when the file changes).
        """
        config = ClientConfig()
        stamp = config.path.stat().st_mtime_ns if config.path.exists() else 0
        cache = getattr(self._local, "clients", None)
        if cache is None or self._local.stamp != stamp:
            for old in (cache or {}).values():
                old.close()
            cache = self._local.clients = {}
            self._local.stamp = stamp
        key = (remote, timeout)
        if key not in cache:
            cache[key] = connect(config, remote, timeout=timeout)
        return cache[key]

    def renew_locks(self, job: Job) -> None:
        """Extend the job's container locks and concurrency slots (called while it works)."""
        for host, name, _label in lock_targets(job):
            self.locks.renew(job.id, host, name, self.settings.lock_lease)
        for name, _limit in job.state.get("slots", []):
            self.semaphores.renew(name, job.id, self.settings.lock_lease)

    def release_locks(self, job: Job) -> None:
        for host, name, _label in lock_targets(job):
            self.locks.release(job.id, host, name)
        for name, _limit in job.state.get("slots", []):
            self.semaphores.release(name, job.id)

    def take_slots(self, job: Job) -> bool:
        """The job's concurrency slots (evacuations: global and per host), all or none."""
        slots = [(name, int(limit)) for name, limit in job.state.get("slots", [])]
        return not slots or self.semaphores.acquire_all(slots, job.id, self.settings.lock_lease)

    def transient_failures(self, job_id: str, step: str) -> int:
        """Count one more transient failure of ``step`` (kept apart from Celery's retry counter, which
        also counts the waits for a concurrency slot)."""
        key = f"orch:job:{job_id}:transient:{step}"
        count = self.redis.incr(key)
        self.redis.expire(key, 86400)
        return int(count)


def lock_targets(job: Job) -> list[tuple[str, str, str]]:
    """The containers a job locks, its source and its target: (host identity, name, label). Jobs
    recorded before hosts had identities lock by remote name."""
    s = job.state
    return [
        (
            s.get(f"{side}_host") or s[f"{side}_remote"],
            s[f"{side}_name"],
            f"{s[f'{side}_remote']}:{s[f'{side}_name']}",
        )
        for side in ("source", "target")
    ]


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
                raise Ignore() from None
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
                raise
            except OrchError as exc:
                finish_with_rollback(ctx, ctx.jobs.get(job_id), FAILED, f"{name}: {exc}")
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


def complete(ctx: StepContext, job: Job) -> None:
    """The last step succeeded: release the locks and mark the job succeeded."""
    ctx.release_locks(job)
    ctx.jobs.finish(job.id, SUCCEEDED)


def finish_with_rollback(ctx: StepContext, job: Job, status: str, reason: str) -> None:
    """Undo what the job did (never touching the source's data), release its locks, record the end."""
    from orchestrator.tasks.rollback import rollback

    if job.finished:
        return
    try:
        rollback(ctx, job)
    except Exception as exc:  # rollback must not hide the original reason
        log.exception("job %s: rollback failed", job.id)
        reason = f"{reason}; rollback incomplete: {exc}"
    ctx.release_locks(job)
    ctx.jobs.finish(job.id, status, reason)
