"""What a step runs with: the per-process handles (Redis, job store, locks, agent clients), the
containers a job locks, and the exception that says the user cancelled it.

Apart from :mod:`orchestrator.stepping` (what every step does around its work) so that the modules the
steps use — the rollback among them — can have these without importing the step machinery.
"""

from __future__ import annotations

import threading

import redis
from celery import Task

from orchestrator.clientconfig import ClientConfig
from orchestrator.connect import RemoteClient, connect
from orchestrator.jobs import Job, JobStore
from orchestrator.limits import Semaphores
from orchestrator.locks import ContainerLocks, lock_targets
from orchestrator.redisserver import WORKER_PATIENCE, redis_url
from orchestrator.redisserver import connect as redis_connect
from orchestrator.runs import RunLeases
from orchestrator.settings import Settings


class Cancelled(Exception):
    """The user asked to cancel the job."""


class Superseded(Exception):
    """Another run of the same step took the job's run lease (this one's worker lost Redis for longer
    than the lease): this run stops without touching the job."""


class StepContext:
    """Per-process handles a step needs (Redis, job store, locks, agent clients)."""

    _instance: StepContext | None = None

    def __init__(
        self,
        settings: Settings,
        redis: redis.Redis | None,
        jobs: JobStore,
        locks: ContainerLocks,
        semaphores: Semaphores,
        runs: RunLeases,
    ) -> None:
        """The stores are given (the unit tests give in-memory ones: orchestrator/memstore.py);
        :meth:`get` builds the process's own, on Redis."""
        self.settings, self.redis = settings, redis
        self.jobs, self.locks, self.semaphores, self.runs = jobs, locks, semaphores, runs
        self._local = threading.local()

    @classmethod
    def on_redis(cls, settings: Settings | None = None) -> StepContext:
        settings = settings or Settings.from_env()
        client = redis_connect(redis_url(settings), WORKER_PATIENCE)
        return cls(settings, client, JobStore(client), ContainerLocks(client), Semaphores(client),
                   RunLeases(client, settings.visibility_timeout))  # fmt: skip

    @property
    def task(self) -> Task | None:
        """The task this thread is running (the worker's threads pool runs several at once)."""
        return getattr(self._local, "task", None)

    @task.setter
    def task(self, value: Task | None) -> None:
        self._local.task = value

    @property
    def run(self) -> str | None:
        """The run (orchestrator/runs.py) of the step this thread is running."""
        return getattr(self._local, "run", None)

    @run.setter
    def run(self, value: str | None) -> None:
        self._local.run = value

    @classmethod
    def get(cls) -> StepContext:
        if cls._instance is None:
            cls._instance = StepContext.on_redis()
        return cls._instance

    def client(self, remote: str, timeout: float = 30.0) -> RemoteClient:
        """A client for ``remote``, kept per thread so that steps reuse its TLS connections.

        The config file is checked on every call (a stat), so remotes added or changed after the worker
        started are picked up (the clients are dropped when the file changes).
        """
        config = ClientConfig.current()  # the same object until the file changes
        cache = getattr(self._local, "clients", None)
        if cache is None or self._local.config is not config:
            for old in (cache or {}).values():
                old.close()
            cache = self._local.clients = {}
            self._local.config = config
        key = (remote, timeout)
        if key not in cache:
            cache[key] = connect(config, remote, timeout=timeout)
        return cache[key]

    def renew_locks(self, job: Job) -> bool:
        """Extend the job's container locks and concurrency slots (called while it works), and check
        that this run still runs the job's step (:class:`Superseded` if another took over); whether
        every lock and slot was still the job's (one whose lease ran out is not taken again here:
        verify_target acquires them, and the locks a later step lost are a warning in the log)."""
        if self.run and not self.runs.still_ours(job.id, self.run):
            raise Superseded()
        held = True
        for host, name, _label in lock_targets(job):
            held &= self.locks.renew(job.id, host, name, self.settings.lock_lease)
        for name, _limit in job.state.slots:
            held &= self.semaphores.renew(name, job.id, self.settings.lock_lease)
        return held

    def locks_fresh(self, job: Job, now: float) -> bool:
        """Whether the job's locks were taken or renewed less than a quarter of their lease ago (the
        record says when): they are certainly still its own."""
        return now - job.locks_ts < self.settings.lock_lease / 4

    def release_locks(self, job: Job) -> None:
        for host, name, _label in lock_targets(job):
            self.locks.release(job.id, host, name)
        for name, _limit in job.state.slots:
            self.semaphores.release(name, job.id)

    def take_slots(self, job: Job) -> bool:
        """The job's concurrency slots (evacuations: global and per host), all or none."""
        slots = [(name, int(limit)) for name, limit in job.state.slots]
        return not slots or self.semaphores.acquire_all(slots, job.id, self.settings.lock_lease)
