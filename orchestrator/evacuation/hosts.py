"""Host scheduling states: online, cordoned, evacuating, evacuated (restoring while moving back).

A host is its agent's certificate fingerprint (:mod:`orchestrator.hostid`), never a remote name: a cordon
or an evacuation made through one name holds for every name of that agent. Every Redis key of this area is
defined here: the state (``orch:host:fp:<id>``), where evacuated containers went (``orch:origin:fp:<id>``),
the evacuation's own record (``orch:evac:fp:<id>``) and the concurrency slots of evacuations and restores.
Remote names contain no ``:``, so these keys can't collide with the name-keyed ones of older versions,
which :meth:`HostStates.adopt_legacy` folds in.

Each change is also written to the agent (server config ``orch.status``), which refuses new containers
while cordoned, evacuating or evacuated — so no client can get around a cordon, whatever it checks
itself. The moves of ``orch restore`` land because the agent is told ``restoring`` first.
"""

from __future__ import annotations

import json

import redis

from orchapi.errors import Conflict, OrchError
from orchestrator import keys
from orchestrator.jobs import now_iso

ONLINE, CORDONED, EVACUATING = "online", "cordoned", "evacuating"
EVACUATED, RESTORING = "evacuated", "restoring"
UNSCHEDULABLE = (CORDONED, EVACUATING, EVACUATED, RESTORING)
#: the agent's own ``orch.status`` values in which it refuses new containers (it accepts them while
#: restoring, for the moves of ``orch restore``)
AGENT_REFUSES = (CORDONED, EVACUATING, EVACUATED)


state_key, origins_key, evacuation_key = keys.host_state, keys.host_origins, keys.host_evacuation


def evacuation_slot(host_id: str) -> str:
    """The semaphore bounding one evacuation's moves (``--parallel``)."""
    return f"evac:{host_id}"


def restore_slot(host_id: str) -> str:
    """The semaphore bounding one restore's moves (``--parallel``)."""
    return f"restore:{host_id}"


def host_slot(host_id: str) -> str:
    """The semaphore bounding the moves from or to one host (``--per-host``), whatever it is called."""
    return f"host:{host_id}"


def _legacy_keys(name: str, host_id: str) -> list[tuple[str, str]]:
    """(old key, new key) pairs: before hosts had identities, these records were keyed by remote name."""
    new = (state_key(host_id), origins_key(host_id), evacuation_key(host_id))
    return list(zip(keys.legacy_host_keys(name), new, strict=True))


class HostStates:
    """Read and change hosts' scheduling states, and where evacuated containers came from."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def status(self, host_id: str) -> str:
        return self.r.hget(state_key(host_id), "status") or ONLINE

    def set_status(self, host_id: str, status: str, agent=None) -> None:  # type: ignore[no-untyped-def]
        """Record ``status`` (and mirror it on the agent when a client is given)."""
        if status == ONLINE:
            self.r.delete(state_key(host_id))
        else:
            self.r.hset(state_key(host_id), mapping={"status": status, "since": now_iso()})
        if agent is not None:
            agent.set_server_config({"orch.status": "" if status == ONLINE else status})

    def check_schedulable(self, host_id: str, remote: str) -> None:
        """Refuse a copy or move onto the host (``remote`` is the name the user gave it)."""
        status = self.status(host_id)
        if status in UNSCHEDULABLE:
            raise Conflict(
                f"remote {remote} is {status}: no copy or move may target it",
                f"uncordon it first (orch uncordon {remote}:) or restore it (orch restore {remote}:)",
            )

    @staticmethod
    def check_agent_status(agent_status: str, remote: str) -> None:
        """Refuse early what the target agent would refuse at the transfer (its own cordon mirror,
        which holds even if Redis lost the record): before any lock is taken or byte moves."""
        if agent_status in AGENT_REFUSES:
            raise Conflict(
                f"remote {remote} is {agent_status} (its agent says so): it accepts no new containers",
                f"orch uncordon {remote}: to allow them",
            )

    def adopt_legacy(self, host_id: str, names: tuple[str, ...] | list[str]) -> None:
        """Fold records an older orch keyed by remote name into the host's (an upgrade must not
        uncordon a host or forget where its evacuated containers went). Fields already recorded
        under the host win; the old keys are removed."""
        pairs = [pair for name in names for pair in _legacy_keys(name, host_id)]
        if not pairs or not self.r.exists(*(old for old, _new in pairs)):
            return  # the common case, one command: nothing left from before
        for old, new in pairs:
            if self.r.type(old) != "hash":
                continue
            for field, value in self.r.hgetall(old).items():
                self.r.hsetnx(new, field, value)
            self.r.delete(old)

    # -- origins of evacuated containers ---------------------------------------------------------------
    def record_origin(
        self,
        origin_id: str,
        container: str,
        target: str,
        was_running: bool,
        job_id: str,
        allow_privileged: bool = False,
    ) -> None:
        """``container`` of host ``origin_id`` now lives on remote ``target`` (moved there with the
        operator's ``--allow-privileged`` or not: its way back needs the same)."""
        entry = {"target": target, "was_running": was_running, "job": job_id, "at": now_iso()}
        if allow_privileged:
            entry["allow_privileged"] = True
        self.r.hset(origins_key(origin_id), container, json.dumps(entry))

    def origins(self, host_id: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.r.hgetall(origins_key(host_id)).items()}

    def forget_origin(self, host_id: str, container: str) -> None:
        self.r.hdel(origins_key(host_id), container)


def mirror_quietly(states: HostStates, host_id: str, status: str, agent) -> str:  # type: ignore[no-untyped-def]
    """Set the status; an unreachable agent only loses the mirror, not the Redis record."""
    try:
        states.set_status(host_id, status, agent)
        return ""
    except OrchError as exc:
        states.set_status(host_id, status)
        return str(exc)
