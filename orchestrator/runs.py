"""Which delivery of a job's step runs it: one at a time, however often the broker hands it out.

A step's message can be delivered twice: its worker lost Redis and the message went back to the queue
while the step still ran, or a retry's copy arrived while the first one was still busy. Each run of a
step takes the job's run lease (``orch:job:<id>:running``, holding a random id of that run, with a
``PX`` lease) before it does anything; a second delivery finds it held and waits (it retries later and
then finds the step done). The lease is renewed by the worker's heartbeat
(orchestrator/workers/leases.py) for as long as the run lasts, so it outlives any step, and runs out
``visibility_timeout`` seconds after a worker died: by then the broker has put the message back, and
the next delivery takes it over.
"""

from __future__ import annotations

import threading
import uuid

import redis

from orchestrator.keys import run_lease
from orchestrator.locks import RELEASE_SCRIPT, RENEW_SCRIPT


class RunLeases:
    """Take, renew and release run leases; remembers the ones this process holds, for the heartbeat."""

    def __init__(self, client: redis.Redis, lease_seconds: float) -> None:
        self.r = client
        self.ms = int(lease_seconds * 1000)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._held: dict[str, str] = {}
        self._mutex = threading.Lock()

    @staticmethod
    def new_run() -> str:
        return uuid.uuid4().hex

    def take(self, job_id: str, run: str) -> bool:
        """Whether ``run`` may run the job's step now (the lease was free, or already its own)."""
        key = run_lease(job_id)
        if self.r.set(key, run, nx=True, px=self.ms) or self.r.get(key) == run:
            with self._mutex:
                self._held[job_id] = run
            return True
        return False

    def still_ours(self, job_id: str, run: str) -> bool:
        """Renew the lease; False if it was lost to another run (this one must stop, without undoing
        anything: the other run carries the job on). A lease that merely ran out (Redis was away) is
        taken again."""
        if self._renew(keys=[run_lease(job_id)], args=[run, self.ms]):
            return True
        return self.take(job_id, run)

    def release(self, job_id: str, run: str) -> None:
        with self._mutex:
            if self._held.get(job_id) == run:
                del self._held[job_id]
        self._release(keys=[run_lease(job_id)], args=[run])

    def renew_held(self, client: redis.Redis | None = None) -> int:
        """Renew every lease this process holds (the heartbeat, on its own ``client``); how many are
        still held."""
        with self._mutex:
            held = list(self._held.items())
        kept = 0
        for job_id, run in held:
            kept += int(bool(self._renew(keys=[run_lease(job_id)], args=[run, self.ms], client=client)))
        return kept
