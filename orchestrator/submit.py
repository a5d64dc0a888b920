"""Submitting copy and move jobs: validate, record the job, lock, send the chain to the workers.

The locks are taken here already (and again, idempotently, by verify_target), so a second job on the
same container is refused at once with a clear error instead of failing later in a worker.
"""

from __future__ import annotations

from typing import Any

from celery import chain

from orchapi.errors import BadRequest, Conflict, OrchError
from orchestrator.jobs import Job, JobStore
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
    same = (src.remote, src.name) == (dst.remote, dst.name)
    if same:
        raise BadRequest(f"{src} and {dst} are the same container")
    kind = "rename" if kind == "move" and src.remote == dst.remote else kind
    settings = Settings.from_env()
    client = connect(redis_url(settings))
    store, locks = JobStore(client), ContainerLocks(client)
    state = {
        "source_remote": src.remote,
        "source_name": src.name,
        "source_snapshot": src.snapshot,
        "target_remote": dst.remote,
        "target_name": dst.name,
        "slots": [list(slot) for slot in slots],
    }
    job = store.create(kind, str(src), f"{dst.remote}:{dst.name}", options, state)
    try:
        locks.acquire(job.id, src.remote, src.name, settings.lock_lease, f" ({kind} {job.label})")
        try:
            locks.acquire(job.id, dst.remote, dst.name, settings.lock_lease)
        except Conflict:
            locks.release(job.id, src.remote, src.name)
            raise
    except OrchError:
        client.delete(f"orch:job:{job.id}")
        client.zrem("orch:jobs", job.id)
        raise
    _signature(kind, job).apply_async()
    return job


def _signature(kind: str, job: Job):  # type: ignore[no-untyped-def]
    from orchestrator.tasks.delete_source import delete_source
    from orchestrator.tasks.issue_token import issue_token
    from orchestrator.tasks.pull_image import pull_image
    from orchestrator.tasks.rename import rename
    from orchestrator.tasks.transfer_delta import transfer_delta
    from orchestrator.tasks.verify_target import verify_target

    label = job.label
    if kind == "rename":
        return rename.si(job.id, label)
    steps = [verify_target, issue_token, pull_image, transfer_delta]
    if kind == "move":
        steps.append(delete_source)
    return chain(*(task.si(job.id, label) for task in steps))
