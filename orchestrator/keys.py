"""Every Redis key orch uses, in one place (the Celery broker's own keys aside: kombu names those).

Jobs
- ``orch:jobs``                     sorted set of job ids by creation time (what ``orch jobs`` lists)
- ``orch:job:<id>``                 hash: the job's record, its state, its steps done, its chain
                                    (orchestrator/jobs.py)
- ``orch:job:<id>:ended``           list: its end status, for followers blocking on it
- ``orch:job:<id>:secrets``         the migration's one-time secrets (TTL; never in task arguments)
- ``orch:job:<id>:transient:<step>`` transient failures of a step so far (its retry budget)
- ``orch:job:<id>:running``         the run lease: which delivery of a step runs it now (runs.py)

Hand-off (orchestrator/dispatch.py): ``orch:submitted``, ``orch:dispatching``, ``orch:dispatching:since``.

Containers and hosts: ``orch:lock:<host>:<name>`` (locks.py), ``orch:sem:<name>`` (limits.py),
``orch:host:fp:<host>``, ``orch:origin:fp:<host>``, ``orch:evac:fp:<host>`` (evacuation/hosts.py; the
``orch:host:<remote>`` forms are what records looked like before hosts had identities).
"""

from __future__ import annotations

JOBS = "orch:jobs"
SUBMITTED = "orch:submitted"
DISPATCHING = "orch:dispatching"
DISPATCHING_SINCE = "orch:dispatching:since"
#: the kombu key holding delivered, unacknowledged messages by delivery time (renewed by the heartbeat)
UNACKED_INDEX = "unacked_index"


def job(job_id: str) -> str:
    return f"orch:job:{job_id}"


def job_ended(job_id: str) -> str:
    return f"{job(job_id)}:ended"


def job_secrets(job_id: str) -> str:
    return f"{job(job_id)}:secrets"


def step_failures(job_id: str, step: str) -> str:
    return f"{job(job_id)}:transient:{step}"


def run_lease(job_id: str) -> str:
    return f"{job(job_id)}:running"


def job_keys_pattern(job_id: str) -> str:
    """Every key beside a job's record (for deleting a job)."""
    return f"{job(job_id)}:*"


def container_lock(host: str, container: str) -> str:
    return f"orch:lock:{host}:{container}"


def semaphore(name: str) -> str:
    return f"orch:sem:{name}"


def host_state(host_id: str) -> str:
    return f"orch:host:fp:{host_id}"


def host_origins(host_id: str) -> str:
    return f"orch:origin:fp:{host_id}"


def host_evacuation(host_id: str) -> str:
    return f"orch:evac:fp:{host_id}"


def legacy_host_keys(name: str) -> tuple[str, str, str]:
    """The state, origins and evacuation keys of a host recorded by remote name (before identities)."""
    return f"orch:host:{name}", f"orch:origin:{name}", f"orch:evac:{name}"
