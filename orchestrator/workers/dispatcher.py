"""The worker's half of the hand-off (orchestrator/dispatch.py): start the chains of submitted jobs.

One thread per ``orch worker`` process, started and stopped with the worker (a Celery bootstep): it
blocks on the submitted list, builds the job's chain (verify_target → issue_token → pull_image →
transfer_delta [→ delete_source], or rename) and publishes it, then forgets the hand-off; every
:data:`SWEEP_EVERY` seconds it puts back ids a dead worker took but never started.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps, chain
from celery.canvas import Signature

from orchapi.errors import NotFound
from orchestrator import dispatch
from orchestrator.chain import steps_for
from orchestrator.jobs import Job, JobStore
from orchestrator.redisserver import WORKER_PATIENCE, connect, redis_url
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

#: how long one wait for a submitted job lasts (also how soon a stop is noticed)
WAIT = 1.0
#: seconds between sweeps for dropped hand-offs
SWEEP_EVERY = 10.0


def chain_of(job: Job) -> Signature:
    """The Celery canvas that runs ``job``: its kind's steps (orchestrator/chain.py), by task name."""
    from orchestrator.celeryapp import app

    return chain(
        *(
            app.signature(step.task_name, args=(job.id, job.label), immutable=True)
            for step in steps_for(job.kind)
        )
    )


def start_job(client: redis.Redis, jobs: JobStore, job_id: str) -> None:
    """Publish the chain of a job taken from the submitted list, unless there is nothing to start."""
    try:
        job = jobs.get(job_id)
    except NotFound:
        job = None  # removed meanwhile (a refused submit cleans up its record)
    if job is not None and not job.finished and not jobs.chain_started(job_id):
        chain_of(job).apply_async()
    dispatch.done(client, job_id)


def sweep(client: redis.Redis, jobs: JobStore) -> None:
    """Put back the hand-offs a dead worker dropped; forget those whose chain started after all."""
    for job_id in dispatch.stale(client):
        if jobs.chain_started(job_id):
            dispatch.done(client, job_id)
        else:
            log.warning("job %s: its hand-off to a worker was dropped; handing it off again", job_id)
            dispatch.requeue(client, job_id)


class Dispatcher(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="orch-dispatcher", daemon=True)
        self.client = connect(redis_url(Settings.from_env()), WORKER_PATIENCE)
        self.jobs = JobStore(self.client)
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        next_sweep = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    sweep(self.client, self.jobs)
                    next_sweep = time.monotonic() + SWEEP_EVERY
                job_id = dispatch.take(self.client, WAIT)
                if job_id is not None:
                    start_job(self.client, self.jobs, job_id)
            except Exception:  # Redis away, a broken record: keep serving; the sweep retries the job
                log.exception("dispatching submitted jobs")
                self._stopping.wait(WAIT)


class DispatcherStep(bootsteps.StartStopStep):
    """Runs the :class:`Dispatcher` for as long as the worker consumes."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: Dispatcher | None = None

    def start(self, worker: Any) -> None:
        self.thread = Dispatcher()
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread.join(WAIT + 5)
            self.thread = None
