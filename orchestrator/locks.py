"""Per-container locks in Redis: one job at a time may work on a container.

A lock is a key holding the owning job's id with a lease (``PX``). The owner renews it while it works;
if every worker of the job died, the lease runs out and the container is free again. Acquiring is
idempotent for the owner (a redelivered task re-acquires its own lock); release and renewal are
compare-and-set scripts, so a job can never drop or extend another job's lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from orchapi.errors import Conflict
from orchestrator import keys

if TYPE_CHECKING:
    from orchestrator.jobs import Job

RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


#: a container's lock, keyed by its host's identity (hostid.py), so two names of one host share it
lock_key = keys.container_lock


class ContainerLocks:
    """Acquire, renew and release container locks on behalf of jobs."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def holder(self, remote: str, container: str) -> str | None:
        return self.r.get(lock_key(remote, container))

    def acquire(
        self,
        job_id: str,
        remote: str,
        container: str,
        lease_seconds: int,
        what: str = "",
        label: str | None = None,
    ) -> None:
        """Take the lock for ``job_id`` or raise :class:`Conflict` naming the job that holds it.

        ``remote`` is the host's identity (or a remote name); ``label`` how the user named the container.
        """
        key = lock_key(remote, container)
        ms = lease_seconds * 1000
        if self.r.set(key, job_id, nx=True, px=ms):
            return
        if self._renew(keys=[key], args=[job_id, ms]):
            return
        other = self.r.get(key)
        if other is None:  # expired between the two calls: try once more
            if self.r.set(key, job_id, nx=True, px=ms):
                return
            other = self.r.get(key) or "?"
        raise Conflict(
            f"container {label or f'{remote}:{container}'} is busy: job {other} is working on it{what}",
            f"wait for it (orch jobs show {other}) or cancel it (orch jobs cancel {other})",
        )

    def renew(self, job_id: str, remote: str, container: str, lease_seconds: int) -> bool:
        return bool(self._renew(keys=[lock_key(remote, container)], args=[job_id, lease_seconds * 1000]))

    def release(self, job_id: str, remote: str, container: str) -> None:
        self._release(keys=[lock_key(remote, container)], args=[job_id])


def lock_targets(job: Job) -> list[tuple[str, str, str]]:
    """The containers a job locks, its source and its target: (host identity, name, label). Jobs
    recorded before hosts had identities lock by remote name."""
    s = job.state
    return [
        (
            getattr(s, f"{side}_host") or getattr(s, f"{side}_remote"),
            getattr(s, f"{side}_name"),
            f"{getattr(s, f'{side}_remote')}:{getattr(s, f'{side}_name')}",
        )
        for side in ("source", "target")
    ]
