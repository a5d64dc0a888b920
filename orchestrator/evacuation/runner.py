"""Evacuating a host and restoring it: gather facts, plan, submit one move chain per container.

Hosts are agents, known by certificate fingerprint (:mod:`orchestrator.hostid`): the host being evacuated
is never a target under another of its names, and a host with several names is one target.

The evacuation's own record (:class:`EvacuationRecord`) maps each container to its job, so running
``orch evacuate`` again continues an interrupted evacuation instead of starting over: finished moves are
kept, running ones are followed, failed ones are submitted again. Concurrency limits are not enforced
here but by every job's first step, through Redis semaphores (hosts.py's ``evacuation_slot`` for
``--parallel`` and ``host_slot`` for ``--per-host``, both by host identity), so they hold however many
workers run the jobs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from orchapi.errors import BadRequest, OrchError
from orchestrator.clientconfig import ClientConfig
from orchestrator.connect import connect
from orchestrator.evacuation.hosts import ONLINE, UNSCHEDULABLE, HostStates, evacuation_key
from orchestrator.evacuation.placement import Candidate, Placement, TargetHost
from orchestrator.hostid import Host, group, identities
from orchestrator.jobs import JobStore, now_iso

DEFAULT_RATE = 100 * 1024 * 1024  # bytes/s assumed for estimates when no job has measured one yet


@dataclass
class HostInfo:
    """What ``orch hosts`` shows for one host (one agent, however many remotes name it)."""

    remote: str
    status: str
    #: every remote naming this host (``remote`` is the first); the agent's certificate fingerprint
    names: tuple[str, ...] = ()
    fingerprint: str = ""
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


def running_jobs(store: JobStore, names: tuple[str, ...]) -> int:
    """Unfinished jobs from or to the host under any of its names (each job counted once)."""
    return sum(
        1
        for job in store.list(500)
        if not job.finished and {job.state.source_remote, job.state.target_remote} & set(names)
    )


def host_info(config: ClientConfig, states: HostStates, store: JobStore, host: Host) -> HostInfo:
    """The host's state and load, asked through the first of its names that answers."""
    info = HostInfo(
        host.name, states.status(host.id), host.names, host.id, jobs=running_jobs(store, host.names)
    )
    errors = []
    for name in host.names:
        try:
            client = connect(config, name, timeout=10)
            server = client.server()
            containers = client.containers()
            break
        except OrchError as exc:
            errors.append(str(exc))
    else:
        info.error = errors[0]
        if info.status == ONLINE:
            info.status = "offline"
        return info
    env = server.raw.get("environment") or {}
    agent_status = server.config.get("orch.status")
    if info.status == ONLINE and agent_status:
        # the agent refuses new containers in this state whatever Redis says (e.g. Redis was reset)
        info.status = str(agent_status)
    info.containers = len(containers)
    info.running = sum(1 for c in containers if c["status"] == "Running")
    info.free = int(env.get("storage_free", 0))
    info.used = int(env.get("storage_total", 0)) - info.free
    info.methods = tuple(server.transfer_methods)
    info.runtime = "/".join(x for x in (env.get("runtime", ""), env.get("storage", "")) if x)
    return info


def unknown_host_info(name: str, why: str) -> HostInfo:
    """A remote whose agent can't be identified (a unix socket nobody answers on): shown on its own."""
    return HostInfo(name, "offline", (name,), error=why)


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
    methods = tuple(client.server().transfer_methods)
    out = []
    for c in client.containers():
        state = client.container_state(c["name"])
        size = int(state.get("disk", {}).get("root", {}).get("usage", 0))
        policy = evacuate_policy(c.get("config") or {})
        out.append(Candidate(c["name"], size, c["status"] == "Running", policy, len(c.get("snapshots", []))))
    return out, methods


def choose_targets(
    config: ClientConfig,
    states: HostStates,
    store: JobStore,
    source: Host,
    wanted: list[str] | None,
    source_name: str = "",
) -> tuple[list[TargetHost], list[str]]:
    """Online, schedulable target hosts (the given ones, or every other HTTPS remote), one per host
    however many names it has; and why the others aren't targets.

    The source (called ``source_name`` by the user) is never a target under any name: asking for it
    with ``--to`` is an error, not a skip, since the user evidently believes it is another host.
    """
    source_name = source_name or source.name
    known, unknown = identities(config)
    hosts = {h.id: h for h in group(known)}
    if wanted:
        for name in wanted:  # in the order given
            if known.get(name) == source.id:
                raise BadRequest(
                    f"--to {name}: is the host being evacuated"
                    + (f" ({name} and {source_name} name the same agent)" if name != source_name else "")
                )
        names = list(dict.fromkeys(wanted))
    else:
        names = [
            n for n in sorted(config.remotes) if not config.remotes[n].is_unix and known.get(n) != source.id
        ]
    targets, skipped, seen = [], [], {}
    for name in names:
        if name in unknown:
            skipped.append(f"{name}: offline ({unknown[name]})")
            continue
        host_id = known[name]
        if host_id in seen:
            skipped.append(f"{name}: the same host as {seen[host_id]}")
            continue
        seen[host_id] = name
        info = host_info(config, states, store, hosts[host_id])
        if not info.online:
            skipped.append(f"{name}: offline ({info.error})")
        elif info.status in UNSCHEDULABLE:
            skipped.append(f"{name}: {info.status}")
        else:
            targets.append(
                TargetHost(name, info.free, info.containers, info.jobs, info.methods, host_id=host_id)
            )
    return targets, skipped


def recent_rate(store: JobStore) -> float:
    rates = [
        j.bytes_done / (j.finished_ts - j.started_ts)
        for j in store.list(50)
        if j.status == "succeeded" and j.finished_ts > j.started_ts and j.bytes_done > 1024 * 1024
    ]
    return sum(rates) / len(rates) if rates else DEFAULT_RATE


class EvacuationRecord:
    """The evacuation of one host (by identity, see hosts.py): options, the plan, container → job id."""

    def __init__(self, client: redis.Redis, host_id: str) -> None:
        self.r, self.host_id, self.key = client, host_id, evacuation_key(host_id)

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
