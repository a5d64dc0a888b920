"""The runtime driver interface and the records it returns.

Drivers are synchronous (they shell out to runc, btrfs, cp ...); the API layer runs them in worker threads
and serialises state changes per container. Drivers raise :mod:`orchapi.errors` exceptions for every
failure a user can cause (unknown name, wrong state, no space), so the API can answer 4xx with the message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

RUNNING = "Running"
STOPPED = "Stopped"

#: LXD's numeric status codes, kept so API consumers used to LXD read them the same way
STATUS_CODES = {RUNNING: 103, STOPPED: 102}

#: container config keys the agent accepts (``user.*`` keys are free-form, as in LXD)
KNOWN_CONFIG_KEYS = {
    "security.privileged": ("true", "false"),
    "boot.stop_timeout": None,
    "evacuate": ("auto", "migrate", "stop", "skip"),
}


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
        }


@dataclass
class ExecResult:
    """Outcome of a non-interactive command run inside a container."""

    returncode: int
    stdout: bytes
    stderr: bytes


def validate_config(config: dict[str, Any]) -> dict[str, str]:
    """Check container config keys and values; returns the config with string values."""
    from orchapi.errors import BadRequest

    if not isinstance(config, dict):
        raise BadRequest("container config must be a mapping of keys to strings")
    out: dict[str, str] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, bool)):
            raise BadRequest(f"invalid config entry {key!r}: keys and values must be strings")
        value = str(value).lower() if isinstance(value, bool) else str(value)
        if key.startswith("user."):
            out[key] = value
            continue
        if key not in KNOWN_CONFIG_KEYS:
            raise BadRequest(
                f"unknown config key {key!r}", "known keys: " + ", ".join(sorted(KNOWN_CONFIG_KEYS))
            )
        allowed = KNOWN_CONFIG_KEYS[key]
        if allowed is not None and value not in allowed:
            raise BadRequest(f"invalid value {value!r} for {key}", "expected one of: " + ", ".join(allowed))
        if key == "boot.stop_timeout" and not value.isdigit():
            raise BadRequest(f"invalid value {value!r} for {key}", "expected a number of seconds")
        out[key] = value
    return out


class Runtime(ABC):
    """A container runtime driver. All names passed in are already validated by the API layer."""

    #: short name reported by ``GET /1.0``
    name: str = ""

    @property
    @abstractmethod
    def storage_name(self) -> str:
        """Storage backend name (``dir``, ``btrfs`` ...)."""

    @property
    @abstractmethod
    def transfer_methods(self) -> tuple[str, ...]:
        """Transfer methods this runtime's storage supports, best first."""

    @abstractmethod
    def recover(self) -> None:
        """Reconcile recorded state with reality after an agent restart; clean up half-done work."""

    @abstractmethod
    def list(self) -> list[ContainerRecord]:
        """All containers, sorted by name."""

    @abstractmethod
    def get(self, name: str) -> ContainerRecord:
        """One container with its live status; :class:`NotFound` if missing."""

    @abstractmethod
    def create(self, name: str, image_fingerprint: str, config: dict[str, str]) -> ContainerRecord:
        """Create a stopped container from an image. :class:`Conflict` if the name exists.

        Must leave nothing behind on failure.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete a stopped container and its snapshots. :class:`Conflict` if it is running."""

    @abstractmethod
    def start(self, name: str) -> None:
        """Start a stopped container. :class:`Conflict` if it is running already."""

    @abstractmethod
    def stop(self, name: str, force: bool = False, timeout: float = 30.0) -> None:
        """Stop a running container: a clean shutdown signal, then a kill after ``timeout``.

        ``force`` kills at once.
        """

    @abstractmethod
    def state(self, name: str) -> dict[str, Any]:
        """Live state: status, status_code, pid, processes, disk usage."""

    @abstractmethod
    def exec(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        cwd: str,
        stdin: bytes | None,
        timeout: float | None,
    ) -> ExecResult:
        """Run ``command`` inside a running container and collect its output."""

    @abstractmethod
    def update_config(self, name: str, config: dict[str, str]) -> ContainerRecord:
        """Replace user-settable config keys (already validated)."""

    @abstractmethod
    def snapshot_create(self, name: str, snapshot: str) -> SnapshotRecord:
        """Take a read-only snapshot. :class:`Conflict` if the snapshot name exists."""

    @abstractmethod
    def snapshot_delete(self, name: str, snapshot: str) -> None:
        """Delete one snapshot."""

    @abstractmethod
    def snapshot_restore(self, name: str, snapshot: str) -> None:
        """Replace the container's rootfs with the snapshot's content (container must be stopped)."""
