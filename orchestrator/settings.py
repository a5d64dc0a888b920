"""Orchestrator settings, from the environment (with defaults fit for one operator's machine).

``ORCH_REDIS_URL``         Redis for the Celery broker, results, job records and locks. Unset: orch
                           starts (once) an embedded ``redis-server`` under its state dir.
``ORCH_STATE_DIR``         default ``$XDG_STATE_HOME/orch`` (``~/.local/state/orch``).
``ORCH_VISIBILITY_TIMEOUT`` seconds after its worker's last sign of life before a task it held goes back to
                           the queue for another worker; default 10. A live worker renews the lease of every
                           task it holds every quarter of this (orchestrator/workers/leases.py), so a
                           step may run as long as it needs; a step whose worker died runs again on
                           another worker ~10–12 s later (tests/test_control_plane.py measures it).
``ORCH_MAX_RETRIES``       retries of a step on transient errors (connection refused, 503, timeouts);
                           default 6, with exponential backoff and jitter from ``ORCH_RETRY_BASE`` seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def state_dir() -> Path:
    explicit = os.environ.get("ORCH_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "orch"


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    state_dir: Path
    visibility_timeout: int
    #: seconds between the workers' sweeps for tasks whose lease ran out (kombu's restore interval)
    restore_interval: float
    max_retries: int
    retry_base: float
    retry_cap: float
    #: lock lease: far longer than the visibility timeout, so a job whose worker died keeps its containers
    #: until another worker has picked the job up again (and through a Redis outage of minutes)
    lock_lease: int

    @classmethod
    def from_env(cls) -> Settings:
        visibility = max(2, int(os.environ.get("ORCH_VISIBILITY_TIMEOUT", "10")))
        return cls(
            redis_url=os.environ.get("ORCH_REDIS_URL") or None,
            state_dir=state_dir(),
            visibility_timeout=visibility,
            restore_interval=1.0,
            max_retries=int(os.environ.get("ORCH_MAX_RETRIES", "6")),
            retry_base=float(os.environ.get("ORCH_RETRY_BASE", "0.5")),
            retry_cap=float(os.environ.get("ORCH_RETRY_CAP", "30")),
            lock_lease=max(300, visibility * 10),
        )
