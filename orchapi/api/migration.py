"""A migration, source side: ``POST /1.0/containers/<name>/migration``, the request and the answer.

The request says to whom the container may go (the certificate the one-time secrets are scoped to: the
target agent's, or the relaying worker's), what of it (a snapshot, or the container without its
snapshots), in which mode (pull, push, relay), for how long the secrets hold and at what rate the source
sends. The answer carries the secrets (the worker keeps them beside the job, never in task arguments)
and what the target needs to know before it connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchapi.api import fields
from orchapi.errors import BadRequest
from orchapi.modes import ALL
from orchapi.names import check_snapshot_name
from orchapi.rates import MIN_RATE

#: how long a migration's secrets hold unless the request says otherwise (seconds)
DEFAULT_TTL = 60
#: the longest they may hold
MAX_TTL = 600
PULL = "pull"


@dataclass(frozen=True)
class MigrationRequest:
    target_certificate: str
    mode: str = PULL
    snapshot: str | None = None
    instance_only: bool = False
    ttl: int = DEFAULT_TTL
    #: bytes per second the source sends at most (None: unlimited)
    bwlimit: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mode": self.mode,
            "target_certificate": self.target_certificate,
            "snapshot": self.snapshot,
            "instance_only": self.instance_only,
            "ttl": self.ttl,
        }
        if self.bwlimit is not None:
            body["bwlimit"] = self.bwlimit
        return body

    @classmethod
    def from_json(cls, body: Any) -> MigrationRequest:
        body = fields.mapping(body)
        pem = body.get("target_certificate")
        if not isinstance(pem, str) or not pem.strip():
            raise BadRequest("target_certificate must be the target agent's PEM certificate")
        snapshot = body.get("snapshot")
        mode = body.get("mode", PULL)
        if mode not in ALL:
            raise BadRequest(f"unknown transfer mode {mode!r}", "use pull, push or relay")
        return cls(
            target_certificate=pem,
            mode=mode,
            snapshot=None if snapshot is None else check_snapshot_name(snapshot),
            instance_only=fields.flag(body, "instance_only"),
            ttl=fields.whole(body, "ttl", 1, MAX_TTL,
                             f"ttl must be a whole number of seconds between 1 and {MAX_TTL}", DEFAULT_TTL),
            bwlimit=fields.whole(body, "bwlimit", MIN_RATE, 2**62,
                                 f"bwlimit must be a number of bytes per second, at least {MIN_RATE}", None),
        )  # fmt: skip


@dataclass(frozen=True)
class MigrationIssued:
    id: str
    #: one-time secrets by channel (``image``, ``fs``)
    secrets: dict[str, str]
    #: the source agent's certificate (PEM), which the target pins when it connects
    certificate: str
    expires_at: str = ""
    snapshots: list[str] = field(default_factory=list)
    base_image: str = ""
    base_image_available: bool = False
    methods: list[str] = field(default_factory=list)
    #: bytes the volumes hold (what the target checks against its free space)
    size: int = 0
    #: the container as ``GET /1.0/containers/<name>`` shows it
    container: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, body: Any) -> MigrationIssued:
        """From the source's answer (a client reads what its agent sent: unknown keys are ignored)."""
        body = fields.mapping(body, "the migration")
        known = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        return cls(**known)
