"""Host scheduling states: online, cordoned, evacuating, evacuated (restoring while moving back).

The orchestrator's record is in Redis (``orch:host:<remote>``); each change is also written to the agent
(server config ``orch.status``) so that anyone inspecting the host sees it. A host that is cordoned,
evacuating or evacuated is never the target of a copy or move, except the moves of ``orch restore``.
"""

from __future__ import annotations

import json

import redis

from orchapi.errors import Conflict, OrchError
from orchestrator.jobs import now_iso

ONLINE, CORDONED, EVACUATING = "online", "cordoned", "evacuating"
EVACUATED, RESTORING = "evacuated", "restoring"
UNSCHEDULABLE = (CORDONED, EVACUATING, EVACUATED, RESTORING)


def _key(remote: str) -> str:
    return f"orch:host:{remote}"


class HostStates:
    """Read and change hosts' scheduling states, and where evacuated containers came from."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def status(self, remote: str) -> str:
        return self.r.hget(_key(remote), "status") or ONLINE

    def set_status(self, remote: str, status: str, agent=None) -> None:  # type: ignore[no-untyped-def]
        """Record ``status`` (and mirror it on the agent when a client is given)."""
        if status == ONLINE:
            self.r.delete(_key(remote))
        else:
            self.r.hset(_key(remote), mapping={"status": status, "since": now_iso()})
        if agent is not None:
            agent_value = "" if status == ONLINE else ("evacuating" if status == RESTORING else status)
            agent.call("PATCH", "/1.0", json={"config": {"orch.status": agent_value}})

    def check_schedulable(self, remote: str) -> None:
        status = self.status(remote)
        if status in UNSCHEDULABLE:
            raise Conflict(
                f"remote {remote} is {status}: no copy or move may target it",
                f"uncordon it first (orch uncordon {remote}:) or restore it (orch restore {remote}:)",
            )

    # -- origins of evacuated containers ---------------------------------------------------------------
    def record_origin(self, origin: str, container: str, target: str, was_running: bool, job_id: str) -> None:
        entry = {"target": target, "was_running": was_running, "job": job_id, "at": now_iso()}
        self.r.hset(f"orch:origin:{origin}", container, json.dumps(entry))

    def origins(self, origin: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.r.hgetall(f"orch:origin:{origin}").items()}

    def forget_origin(self, origin: str, container: str) -> None:
        self.r.hdel(f"orch:origin:{origin}", container)


def mirror_quietly(states: HostStates, remote: str, status: str, agent) -> str:  # type: ignore[no-untyped-def]
    """Set the status; an unreachable agent only loses the mirror, not the Redis record."""
    try:
        states.set_status(remote, status, agent)
        return ""
    except OrchError as exc:
        states.set_status(remote, status)
        return str(exc)
