"""Submitting copy and move jobs: validate, record the job, lock, hand it to the workers.

No Celery here: the workers start the job's chain (orchestrator/dispatch.py), so ``orch move`` imports
and does no more than recording a job needs.

The locks are taken here already (and again, idempotently, by verify_target), so a second job on the
same container is refused at once with a clear error instead of failing later in a worker.
"""

from __future__ import annotations

import functools
from typing import Any

import redis

from orchapi.errors import BadRequest, Conflict, OrchError
from orchestrator import dispatch
from orchestrator.jobs import Job, JobStore
from orchestrator.jobstate import JobState
from orchestrator.locks import ContainerLocks
from orchestrator.redisserver import connect, redis_url
from orchestrator.refs import Ref
from orchestrator.settings import Settings


def submit(kind: str, src: Ref, dst: Ref, options: dict[str, Any], slots: list[tuple[str, int]] = ()) -> Job:
    """Record and start a ``copy`` or ``move`` job from ``src`` to ``dst`` (``dst.name`` resolved).

    ``slots`` are concurrency limits ((semaphore name, limit) pairs) the job must hold while it runs.
    """
    if kind == "move" and src.snapshot:
        raise BadRequest("a snapshot can't be moved", "copy it instead: orch copy")
    src_host, dst_host = _host(src.remote), _host(dst.remote)
    if (src_host, src.name) == (dst_host, dst.name) and not src.snapshot:
        also = "" if src.remote == dst.remote else f" ({src.remote} and {dst.remote} name the same host)"
        raise BadRequest(f"{src} and {dst} are the same container{also}")
    # two names of one host: a move is a rename on that agent, not a transfer to itself
    kind = "rename" if kind == "move" and src_host == dst_host else kind
    settings = Settings.from_env()
    client = _client(redis_url(settings))
    store, locks = JobStore(client), ContainerLocks(client)
    state = JobState(
        source_remote=src.remote,
        source_name=src.name,
        source_snapshot=src.snapshot,
        target_remote=dst.remote,
        target_name=dst.name,
        source_host=src_host,
        target_host=dst_host,
        slots=[list(slot) for slot in slots],
    )
    job = store.create(kind, str(src), f"{dst.remote}:{dst.name}", options, state)
    try:
        what = f" ({kind} {job.label})"
        locks.acquire(job.id, src_host, src.name, settings.lock_lease, what, label=str(src))
        try:
            locks.acquire(job.id, dst_host, dst.name, settings.lock_lease, label=f"{dst.remote}:{dst.name}")
        except Conflict:
            locks.release(job.id, src_host, src.name)
            raise
    except OrchError:
        store.delete(job.id)
        raise
    dispatch.enqueue(client, job.id)  # a worker starts its chain (orchestrator/workers/dispatcher.py)
    return job


@functools.cache
def _client(url: str) -> redis.Redis:
    """One client (and connection pool) per Redis for the process: an evacuation submits many jobs."""
    return connect(url)


def _host(remote: str) -> str:
    """The identity of the host ``remote`` names (hostid.py); the remote name if it can't be known now
    (an unreachable unix remote: the job then fails on it with a clear error)."""
    from orchestrator.clientconfig import ClientConfig
    from orchestrator.hostid import identify

    try:
        return identify(ClientConfig.current(), remote)
    except OrchError:
        return remote
