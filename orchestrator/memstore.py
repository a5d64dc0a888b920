"""In-memory stand-ins for the Redis-backed stores, for unit tests of the step machinery without Redis
(like dramatiq's ``stub`` broker): the same methods, the same answers, kept in dicts.

The real stores (jobs.py, runs.py, locks.py, limits.py) are exercised against a real Redis by the
integration tests; these only let :class:`~orchestrator.stepping.StepRun`'s decisions (skip a
duplicate, wait for a run lease or a slot, retry, fail, roll back, cancel) be tested one by one.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import uuid
from typing import Any

from orchapi.errors import Conflict, NotFound
from orchestrator.jobs import QUEUED, Job, now_iso
from orchestrator.jobstate import JobState


class MemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.done: dict[tuple[str, str], str] = {}
        self.chains: dict[str, str] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self._secrets: dict[str, dict[str, str]] = {}

    def create(self, kind: str, source: str, target: str, options: dict[str, Any], state: JobState) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind, source, target, QUEUED, options=options,
                  created_at=now_iso(), created_ts=time.time(), state=copy.deepcopy(state))  # fmt: skip
        self.jobs[job.id] = job
        return copy.deepcopy(job)

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"job {job_id} not found", "see `orch jobs`")
        return copy.deepcopy(self.jobs[job_id])

    def update(self, job_id: str, **fields: Any) -> None:
        names = {f.name for f in dataclasses.fields(Job)}
        for name, value in fields.items():
            if name in names:
                setattr(self.jobs[job_id], name, copy.deepcopy(value))
        self.jobs[job_id].updated_at = time.time()

    def update_state(self, job: Job, **values: Any) -> None:
        JobState.check_names(values)
        for name, value in values.items():
            setattr(job.state, name, value)
            setattr(self.jobs[job.id].state, name, copy.deepcopy(value))

    def mark_step_done(self, job_id: str, step: str, run: str) -> bool:
        if self.done.setdefault((job_id, step), run) != run:
            return False
        if step not in self.jobs[job_id].steps_done:
            self.jobs[job_id].steps_done.append(step)
        return True

    def step_done(self, job_id: str, step: str) -> bool:
        return (job_id, step) in self.done

    def claim_chain(self, job_id: str, chain_id: str, job: Job | None = None) -> bool:
        owner = self.chains.setdefault(job_id, chain_id)
        self.jobs[job_id].chain = owner
        return owner == chain_id

    def chain_started(self, job_id: str) -> bool:
        return job_id in self.chains

    def count_failure(self, job_id: str, step: str) -> int:
        self.failures[(job_id, step)] = self.failures.get((job_id, step), 0) + 1
        return self.failures[(job_id, step)]

    def finish(self, job_id: str, status: str, error: str = "") -> None:
        self.update(
            job_id, status=status, error=error, stage="", finished_at=now_iso(), finished_ts=time.time()
        )
        self._secrets.pop(job_id, None)

    def cancel_requested(self, job_id: str) -> bool:
        return self.jobs[job_id].cancel_requested

    def request_cancel(self, job_id: str) -> Job:
        if not self.jobs[job_id].finished:
            self.jobs[job_id].cancel_requested = True
        return self.get(job_id)

    def set_secrets(self, job_id: str, secrets: dict[str, str]) -> None:
        self._secrets[job_id] = dict(secrets)

    def secrets(self, job_id: str) -> dict[str, str]:
        return dict(self._secrets.get(job_id, {}))


class MemoryLeases:
    """Leases by key (run leases and container locks alike): holder and expiry."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, float]] = {}

    def _free(self, key: str, holder: str) -> bool:
        current = self.held.get(key)
        return current is None or current[0] == holder or current[1] < time.monotonic()

    def grab(self, key: str, holder: str, seconds: float) -> bool:
        if not self._free(key, holder):
            return False
        self.held[key] = (holder, time.monotonic() + seconds)
        return True

    def renew(self, key: str, holder: str, seconds: float) -> bool:
        current = self.held.get(key)
        if current is None or current[0] != holder or current[1] < time.monotonic():
            return False
        self.held[key] = (holder, time.monotonic() + seconds)
        return True

    def drop(self, key: str, holder: str) -> None:
        if self.held.get(key, ("",))[0] == holder:
            del self.held[key]


class MemoryRunLeases(MemoryLeases):
    def __init__(self, lease_seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = lease_seconds

    new_run = staticmethod(lambda: uuid.uuid4().hex)

    def take(self, job_id: str, run: str) -> bool:
        return self.grab(job_id, run, self.seconds)

    def still_ours(self, job_id: str, run: str) -> bool:
        return self.renew(job_id, run, self.seconds) or self.take(job_id, run)

    def release(self, job_id: str, run: str) -> None:
        self.drop(job_id, run)

    def renew_held(self, client: Any = None) -> int:
        return len(self.held)


class MemoryLocks:
    """ContainerLocks' methods over leases keyed ``host:container``, held by job ids."""

    def __init__(self) -> None:
        self.leases = MemoryLeases()

    @property
    def held(self) -> dict[str, tuple[str, float]]:
        return self.leases.held

    def acquire(self, job_id: str, remote: str, container: str, lease_seconds: int, what: str = "",
                label: str | None = None) -> None:  # fmt: skip
        if not self.leases.grab(f"{remote}:{container}", job_id, lease_seconds):
            raise Conflict(f"container {label or f'{remote}:{container}'} is busy{what}")

    def renew(self, job_id: str, remote: str, container: str, lease_seconds: int) -> bool:
        return self.leases.renew(f"{remote}:{container}", job_id, lease_seconds)

    def release(self, job_id: str, remote: str, container: str) -> None:
        self.leases.drop(f"{remote}:{container}", job_id)


class MemorySemaphores:
    def __init__(self) -> None:
        self.holders: dict[str, set[str]] = {}

    def acquire_all(self, slots: list[tuple[str, int]], holder: str, lease: float) -> bool:
        if any(holder not in self.holders.get(name, set()) and len(self.holders.get(name, set())) >= limit
               for name, limit in slots):  # fmt: skip
            return False
        for name, _limit in slots:
            self.holders.setdefault(name, set()).add(holder)
        return True

    def renew(self, name: str, holder: str, lease: float) -> bool:
        return holder in self.holders.get(name, set())

    def release(self, name: str, holder: str) -> None:
        self.holders.get(name, set()).discard(holder)
