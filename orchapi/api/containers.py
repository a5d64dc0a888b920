"""Container requests: ``PUT /1.0/containers/<name>/state`` and ``POST /1.0/containers/<name>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchapi.api import fields
from orchapi.names import check_container_name

ACTIONS = ("start", "stop", "restart")
#: the longest stop an agent waits for before it kills (a client may always ask for less)
MAX_STOP_TIMEOUT = 3600.0


@dataclass(frozen=True)
class StateChange:
    """Start, stop or restart a container; ``force`` kills at once, ``timeout`` is how long a stop
    waits for the container to shut down cleanly before it is killed."""

    action: str
    timeout: float = 30.0
    force: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "timeout": self.timeout, "force": self.force}

    @classmethod
    def from_json(cls, body: Any) -> StateChange:
        body = fields.mapping(body)
        action = fields.choice(body, "action", ACTIONS, "action must be one of start, stop, restart")
        force = fields.flag(body, "force")
        return cls(action, fields.seconds(body, "timeout", 30, MAX_STOP_TIMEOUT), force)


@dataclass(frozen=True)
class ContainerFromImage:
    """``POST /1.0/containers`` from an image the agent has (by fingerprint or alias)."""

    name: str
    image: str
    config: dict[str, str] = field(default_factory=dict)
    start: bool = False

    def to_json(self) -> dict[str, Any]:
        source = {"type": "image", "fingerprint": self.image}
        return {"name": self.name, "source": source, "config": dict(self.config), "start": self.start}


@dataclass(frozen=True)
class Rename:
    """Rename a (stopped) container."""

    name: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_json(cls, body: Any) -> Rename:
        return cls(check_container_name(fields.mapping(body).get("name")))
