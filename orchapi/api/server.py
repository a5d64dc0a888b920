"""What ``GET /1.0`` reports of an agent: whether it trusts the caller, its server config, and its
environment (certificate, listening addresses, transfer methods, free space)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchapi.api import fields


@dataclass(frozen=True)
class ServerInfo:
    #: "trusted" when the caller's certificate is in the agent's trust store
    auth: str = ""
    #: the server config (``orch.status``: the host's scheduling state; ``migration.modes`` …)
    config: dict[str, Any] = field(default_factory=dict)
    #: the agent's certificate (PEM) and its SHA-256 fingerprint (its identity: orchestrator/hostid.py)
    certificate: str = ""
    certificate_fingerprint: str = ""
    #: HOST:PORT pairs it listens on for HTTPS
    addresses: list[str] = field(default_factory=list)
    transfer_methods: list[str] = field(default_factory=list)
    #: bytes free for containers (None: not known)
    storage_free: int | None = None
    #: the whole answer, for what is not typed here
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def trusted(self) -> bool:
        return self.auth == "trusted"

    @classmethod
    def from_json(cls, body: Any) -> ServerInfo:
        body = fields.mapping(body, "the agent's /1.0")
        env = body.get("environment") or {}
        return cls(
            auth=str(body.get("auth") or ""),
            config=dict(body.get("config") or {}),
            certificate=str(env.get("certificate") or ""),
            certificate_fingerprint=str(env.get("certificate_fingerprint") or ""),
            addresses=list(env.get("addresses") or []),
            transfer_methods=list(env.get("transfer_methods") or []),
            storage_free=env.get("storage_free"),
            raw=body,
        )
