"""The hand-off of submitted jobs to the workers: a Redis list, so that submitting needs no Celery.

``orch copy``/``move`` (and an evacuation) record the job, take its locks and push its id onto
``orch:submitted``; that is all the CLI does with Redis before it follows the job. A dispatcher thread
in every ``orch worker`` (orchestrator/workers/dispatcher.py) moves the id onto ``orch:dispatching``
(atomically, ``BLMOVE``), starts the job's Celery chain and removes the id. Importing Celery and
publishing a chain cost the CLI ~85 ms of its ~250 ms here; a worker has both loaded already.

Nothing is lost if a worker dies in between: an id that stays on ``orch:dispatching`` longer than
:data:`STALE_AFTER` is put back by any worker's sweep, unless its chain has started. That makes the
hand-off at-least-once; a job's chain still runs once, because the first step of a chain claims the job
for that chain (:meth:`~orchestrator.jobs.JobStore.claim_chain`) and a second chain's steps stop there.
"""

from __future__ import annotations

import time

import redis

from orchestrator import keys
from orchestrator.jobs import CANCELLED, JobStore
from orchestrator.locks import ContainerLocks, lock_targets

#: job ids waiting for a worker to start their chain (pushed left, taken right: first come, first served)
SUBMITTED = keys.SUBMITTED
#: job ids a worker took and is starting the chain of
DISPATCHING = keys.DISPATCHING
#: when each id on DISPATCHING was taken (the sweep's clock)
TAKEN_AT = keys.DISPATCHING_SINCE
#: seconds after which an id still on DISPATCHING counts as dropped by a dead worker
STALE_AFTER = 30.0
#: the chain claim of a job cancelled before any chain started: no chain may run it
WITHDRAWN = "withdrawn"

# put an id back where it came from, once, however many sweeps race for it
_REQUEUE = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) > 0 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


def enqueue(client: redis.Redis, job_id: str) -> None:
    """Hand a recorded job to the workers."""
    client.lpush(SUBMITTED, job_id)


def take(client: redis.Redis, timeout: float) -> str | None:
    """The next submitted job id (moved onto DISPATCHING), or None after ``timeout`` seconds."""
    job_id = client.blmove(SUBMITTED, DISPATCHING, timeout, "RIGHT", "LEFT")
    if job_id is None:
        return None
    client.hset(TAKEN_AT, job_id, time.time())
    return job_id.decode() if isinstance(job_id, bytes) else job_id


def done(client: redis.Redis, job_id: str) -> None:
    """The job's chain is started (or there is nothing to start): forget the hand-off."""
    with client.pipeline() as pipe:
        pipe.lrem(DISPATCHING, 0, job_id)
        pipe.hdel(TAKEN_AT, job_id)
        pipe.execute()


def stale(client: redis.Redis, now: float | None = None, after: float = STALE_AFTER) -> list[str]:
    """Ids on DISPATCHING for longer than ``after`` seconds (an id without a clock gets one now: its
    worker died between taking it and noting the time)."""
    now = time.time() if now is None else now
    out = []
    for raw in client.lrange(DISPATCHING, 0, -1):
        job_id = raw.decode() if isinstance(raw, bytes) else raw
        since = client.hget(TAKEN_AT, job_id)
        if since is None:
            client.hsetnx(TAKEN_AT, job_id, now)
        elif now - float(since) > after:
            out.append(job_id)
    return out


def requeue(client: redis.Redis, job_id: str) -> None:
    """Put a dropped id back at the head of the line (taken next)."""
    client.eval(_REQUEUE, 3, DISPATCHING, SUBMITTED, TAKEN_AT, job_id)


def withdraw(client: redis.Redis, job_id: str) -> bool:
    """Cancel a job whose chain has not started, at once: claim it for no chain (a chain published
    meanwhile stops at its first step), release its locks and end it. False if a chain runs it already
    (its steps then roll it back when they see the cancel)."""
    jobs = JobStore(client)
    if not jobs.claim_chain(job_id, WITHDRAWN):
        return False
    job = jobs.get(job_id)
    locks = ContainerLocks(client)
    for host, name, _label in lock_targets(job):
        locks.release(job_id, host, name)
    client.lrem(SUBMITTED, 0, job_id)
    done(client, job_id)
    if not job.finished:
        jobs.finish(job_id, CANCELLED, "cancelled by the user before it started")
    return True
