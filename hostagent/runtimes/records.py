"""The records a runtime driver returns: containers, their snapshots, a command's outcome (shared by the
driver interface, hostagent/runtimes/base.py, and the migration hooks, hostagent/runtimes/hooks.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUNNING = "Running"
STOPPED = "Stopped"

#: LXD's numeric status codes, kept so API consumers used to LXD read them the same way
STATUS_CODES = {RUNNING: 103, STOPPED: 102, "Frozen": 110, "Error": 112}


@dataclass
class SnapshotRecord:
    """One snapshot of a container."""

    name: str
    created_at: str

    def to_api(self, container: str) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "container": container}


@dataclass
class ContainerRecord:
    """What the agent knows of one container (persisted by the driver)."""

    name: str
    status: str
    created_at: str
    base_image: str
    architecture: str = "x86_64"
    config: dict[str, str] = field(default_factory=dict)
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    pid: int = 0
    #: further LXD-shaped fields the runtime knows (LXD: profiles, devices, description, ephemeral)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        """The LXD-shaped JSON form (``GET /1.0/containers/<name>``)."""
        return {
            "name": self.name,
            "type": "container",
            "status": self.status,
            "status_code": STATUS_CODES.get(self.status, 0),
            "created_at": self.created_at,
            "architecture": self.architecture,
            "config": {**self.config, "volatile.base_image": self.base_image},
            "snapshots": [s.name for s in self.snapshots],
            "ephemeral": False,
            "stateful": False,
            **self.extra,
        }


@dataclass
class ExecResult:
    """Outcome of a non-interactive command run inside a container."""

    returncode: int
    stdout: bytes
    stderr: bytes
