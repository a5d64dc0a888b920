"""Choosing a target for each container of a host being evacuated (pure logic, no I/O).

Per container the action comes from ``--action`` if given, else from the container's ``evacuate``
config key (``auto``/``migrate`` → migrate, ``stop``, ``skip``). Containers to migrate are placed
largest first (first-fit decreasing keeps big ones from being stranded by small ones), each on the
target with the lowest load (containers + running jobs + what this plan already sent there) among those
with room for it, ties broken by most free space. Space already promised to earlier placements is
reserved, so no target is ever planned over capacity. A container that fits nowhere stays where it is
and is reported; it is stopped only if its policy says ``stop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIGRATE, STOP, SKIP, STAY = "migrate", "stop", "skip", "stay"
POLICIES = ("auto", MIGRATE, STOP, SKIP)


@dataclass(frozen=True)
class Candidate:
    """A container on the host being evacuated."""

    name: str
    size: int
    running: bool
    policy: str = "auto"
    snapshots: int = 0


@dataclass
class TargetHost:
    """A host that may receive containers."""

    remote: str
    free: int
    containers: int = 0
    jobs: int = 0
    methods: tuple[str, ...] = ()
    planned: int = 0
    reserved: int = 0
    #: the agent's certificate fingerprint (hostid.py): what its concurrency slots are keyed by
    host_id: str = ""

    @property
    def load(self) -> int:
        return self.containers + self.jobs + self.planned


@dataclass
class Placement:
    """What the plan does with one container."""

    container: str
    size: int
    state: str
    policy: str
    action: str
    target: str = ""
    method: str = ""
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def action_for(candidate: Candidate, override: str | None) -> str:
    policy = override or candidate.policy or "auto"
    if policy not in POLICIES:
        raise ValueError(f"unknown evacuation policy {policy!r} for {candidate.name}")
    return MIGRATE if policy in ("auto", MIGRATE) else policy


def best_method(source_methods: tuple[str, ...], target_methods: tuple[str, ...]) -> str:
    for method in ("btrfs", "rsync", "tar"):
        if method in source_methods and method in target_methods:
            return method
    return ""


def plan(
    candidates: list[Candidate],
    targets: list[TargetHost],
    override: str | None = None,
    source_methods: tuple[str, ...] = ("rsync", "tar"),
    headroom: float = 0.05,
) -> list[Placement]:
    """Place every candidate; the result is in the candidates' order."""
    decided: dict[str, Placement] = {}
    for c in sorted(candidates, key=lambda c: (-c.size, c.name)):
        state = "RUNNING" if c.running else "STOPPED"
        action = action_for(c, override)
        if action != MIGRATE:
            decided[c.name] = Placement(c.name, c.size, state, c.policy, action, reason=f"policy {action}")
            continue
        need = int(c.size * (1 + headroom))
        usable = [
            t
            for t in targets
            if t.free - t.reserved >= need and best_method(source_methods, t.methods or source_methods)
        ]
        if not usable:
            reason = f"no target has {need / 2**20:.1f} MiB free" if targets else "no target host available"
            fallback = STOP if c.policy == STOP else STAY
            decided[c.name] = Placement(c.name, c.size, state, c.policy, fallback, reason=reason)
            continue
        chosen = min(usable, key=lambda t: (t.load, -(t.free - t.reserved), t.remote))
        chosen.reserved += need
        chosen.planned += 1
        method = best_method(source_methods, chosen.methods or source_methods)
        decided[c.name] = Placement(c.name, c.size, state, c.policy, MIGRATE, chosen.remote, method)
    return [decided[c.name] for c in candidates]
