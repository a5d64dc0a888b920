"""Evacuating a host and restoring it: gather facts, plan, submit one move chain per container.

The evacuation's own record (``orch:evac:<host>``) maps each container to its job, so running
``orch evacuate`` again continues an interrupted evacuation instead of starting over: finished moves are
kept, running ones are followed, failed ones are submitted again. Concurrency limits are not enforced
here but by every job's first step, through Redis semaphores (``evac:<host>`` for ``--parallel`` and
``host:<remote>`` for ``--per-host``), so they hold however many workers run the jobs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from orchapi.errors import OrchError
from orchestrator.clientconfig import ClientConfig
from orchestrator.connect import connect
from orchestrator.evacuation.hosts import UNSCHEDULABLE, HostStates
from orchestrator.evacuation.placement import Candidate, Placement, TargetHost
from orchestrator.jobs import JobStore, now_iso

DEFAULT_RATE = 100 * 1024 * 1024  # bytes/s assumed for estimates when no job has measured one yet


@dataclass
class HostInfo:
    """What ``orch hosts`` shows for one remote."""

    remote: str
    status: str
    containers: int = 0
    running: int = 0
    used: int = 0
    free: int = 0
    jobs: int = 0
    methods: tuple[str, ...] = ()
    #: what runs the host's containers and stores them ("native/btrfs", "lxd/dir" ...)
    runtime: str = ""
    error: str = ""

    @property
    def online(self) -> bool:
        return not self.error


def running_jobs(store: JobStore, remote: str) -> int:
    return sum(
        1
        for job in store.list(500)
        if not job.finished and remote in (job.state.get("source_remote"), job.state.get("target_remote"))
    )


def host_info(config: ClientConfig, states: HostStates, store: JobStore, remote: str) -> HostInfo:
    info = HostInfo(remote, states.status(remote), jobs=running_jobs(store, remote))
    try:
        client = connect(config, remote, timeout=10)
        server = client.get("/1.0")
        env = server["environment"]
        containers = client.get("/1.0/containers", params={"recursion": 1})
    except OrchError as exc:
        info.error = str(exc)
        if info.status == "online":
            info.status = "offline"
        return info
    info.containers = len(containers)
    info.running = sum(1 for c in containers if c["status"] == "Running")
    info.free = int(env.get("storage_free", 0))
    info.used = int(env.get("storage_total", 0)) - info.free
    info.methods = tuple(env.get("transfer_methods", ()))
    info.runtime = "/".join(x for x in (env.get("runtime", ""), env.get("storage", "")) if x)
    return info


def evacuate_policy(config: dict[str, str]) -> str:
    """A container's policy: orch's ``evacuate`` key (on LXD hosts stored as ``user.orch.evacuate``),
    else LXD's own ``cluster.evacuate`` (whose live-migrate is a migrate here: CRIU is out), else auto."""
    policy = config.get("evacuate") or config.get(LXD_POLICY_KEY) or config.get("cluster.evacuate") or "auto"
    return "migrate" if policy == "live-migrate" else policy


#: where an LXD-backed agent keeps orch's evacuate policy (LXD's cluster.evacuate has no "skip")
LXD_POLICY_KEY = "user.orch.evacuate"


def gather_candidates(config: ClientConfig, remote: str) -> tuple[list[Candidate], tuple[str, ...]]:
    """The containers of ``remote`` with their sizes, states and policies, and its transfer methods."""
    client = connect(config, remote)
    methods = tuple(client.get("/1.0")["environment"].get("transfer_methods", ()))
    out = []
    for c in client.get("/1.0/containers", params={"recursion": 1}):
        state = client.get(f"/1.0/containers/{c['name']}/state")
        size = int(state.get("disk", {}).get("root", {}).get("usage", 0))
        policy = evacuate_policy(c.get("config") or {})
        out.append(Candidate(c["name"], size, c["status"] == "Running", policy, len(c.get("snapshots", []))))
    return out, methods


def choose_targets(
    config: ClientConfig, states: HostStates, store: JobStore, source: str, wanted: list[str] | None
) -> tuple[list[TargetHost], list[str]]:
    """Online, schedulable target hosts (the given ones, or every other remote); and why others aren't."""
    names = wanted or [r for r in sorted(config.remotes) if r != source and not config.remotes[r].is_unix]
    targets, skipped = [], []
    for name in names:
        if name == source:
            skipped.append(f"{name}: it is the host being evacuated")
            continue
        info = host_info(config, states, store, name)
        if not info.online:
            skipped.append(f"{name}: offline ({info.error})")
        elif info.status in UNSCHEDULABLE:
            skipped.append(f"{name}: {info.status}")
        else:
            targets.append(TargetHost(name, info.free, info.containers, info.jobs, info.methods))
    return targets, skipped


def recent_rate(store: JobStore) -> float:
    rates = [
        j.bytes_done / (j.finished_ts - j.started_ts)
        for j in store.list(50)
        if j.status == "succeeded" and j.finished_ts > j.started_ts and j.bytes_done > 1024 * 1024
    ]
    return sum(rates) / len(rates) if rates else DEFAULT_RATE


class EvacuationRecord:
    """``orch:evac:<host>``: options, the plan, and container → job id."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.r, self.host, self.key = client, host, f"orch:evac:{host}"

    def load(self) -> dict[str, Any]:
        raw = self.r.hgetall(self.key)
        return {k: json.loads(v) for k, v in raw.items()}

    def start(self, options: dict[str, Any], plan: list[Placement]) -> None:
        self.r.hset(
            self.key,
            mapping={
                "options": json.dumps(options),
                "plan": json.dumps([asdict(p) for p in plan]),
                "started_at": json.dumps(now_iso()),
            },
        )

    def jobs(self) -> dict[str, str]:
        return json.loads(self.r.hget(self.key, "jobs") or "{}")

    def set_job(self, container: str, job_id: str) -> None:
        jobs = self.jobs()
        jobs[container] = job_id
        self.r.hset(self.key, "jobs", json.dumps(jobs))

    def outcomes(self) -> dict[str, str]:
        return json.loads(self.r.hget(self.key, "outcomes") or "{}")

    def set_outcome(self, container: str, outcome: str) -> None:
        outcomes = self.outcomes()
        outcomes[container] = outcome
        self.r.hset(self.key, "outcomes", json.dumps(outcomes))

    def clear(self) -> None:
        self.r.delete(self.key)
