"""Receiving a container or an image from another agent: the ``source`` of ``POST /1.0/containers``
(``type: migration``), of ``POST /1.0/images`` (an image pulled from a migration), and the push request
``POST /1.0/migrations/<id>/push`` that makes a source dial the target's sink.

The types check the shape of what arrives (types, the mode); what the receiving agent's policy decides
(known methods, the compression wishes, the URL's form, fingerprints) is the agent's, beside them
(hostagent/migration/target/request.py, hostagent/migration/push.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchapi.api import fields
from orchapi.errors import BadRequest
from orchapi.modes import ALL

PULL = "pull"
MIGRATION = "migration"


@dataclass(frozen=True)
class ReceiveSource:
    """A container to receive: pulled from the source's migration (``pull``: ``operation`` and the
    ``fs`` secret given), or pushed by the source or a relaying worker (``push``, ``relay``: only the
    ``certificate`` of the peer that will dial; the sink makes its own secret)."""

    mode: str
    #: the PEM certificate of the peer: the source agent, or the relaying worker
    certificate: str
    base_image: str = ""
    refresh: bool = False
    #: the transfer method the user asked for (None: negotiate)
    method: str | None = None
    allow_privileged: bool = False
    compression: str = "auto"
    #: pull only: the source's migration URL and its secrets (``{"fs": …}``)
    operation: str = ""
    secrets: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": MIGRATION,
            "mode": self.mode,
            "certificate": self.certificate,
            "base-image": self.base_image,
            "refresh": self.refresh,
            "method": self.method,
            "allow_privileged": self.allow_privileged,
            "compression": self.compression,
        }
        if self.mode == PULL:
            body.update(operation=self.operation, secrets=self.secrets or {})
        return body

    @classmethod
    def from_json(cls, source: Any) -> ReceiveSource:
        source = fields.mapping(source, "source")
        mode = source.get("mode", PULL)
        if mode not in ALL:
            raise BadRequest(f"migration mode {mode!r} is not supported", "use pull, push or relay")
        secrets = source.get("secrets") if mode == PULL else None
        if mode == PULL and not isinstance(secrets, dict):
            raise BadRequest("source.secrets must hold the 'fs' migration secret")
        if mode != PULL:
            for key in ("operation", "secrets"):
                if source.get(key):
                    raise BadRequest(f"source.{key} is for pull mode; a push sink makes its own secret")
        base_image = source.get("base-image") or ""
        if not isinstance(base_image, str):
            raise BadRequest("source.base-image must be an image fingerprint")
        method = source.get("method") or None
        if method is not None and not isinstance(method, str):
            raise BadRequest(f"unknown transfer method {method!r}")
        operation = source.get("operation") if mode == PULL else ""
        if not isinstance(operation, str):
            raise BadRequest("source.operation must be the URL of the source's migration")
        pem = source.get("certificate")
        if not isinstance(pem, str) or not pem:
            raise BadRequest(
                "source.certificate must be the source agent's PEM certificate"
                if mode == PULL
                else "source.certificate must be the PEM certificate of the agent that will push"
            )
        return cls(
            mode=mode,
            certificate=pem,
            base_image=base_image,
            refresh=_flag(source, "refresh"),
            method=method,
            allow_privileged=_flag(source, "allow_privileged"),
            compression=source.get("compression"),  # type: ignore[arg-type]  # the agent checks it
            operation=operation,
            secrets=secrets,
        )


def _flag(source: dict[str, Any], key: str) -> bool:
    value = source.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"source.{key} must be true or false")
    return value


@dataclass(frozen=True)
class ImageFromMigration:
    """``POST /1.0/images`` with ``source.type: migration``: the target pulls the base image from the
    source's migration (its ``image`` secret) unless it has it."""

    operation: str
    secret: str
    certificate: str
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {"source": {"type": MIGRATION, **self.__dict__}}


@dataclass(frozen=True)
class PushRequest:
    """``POST /1.0/migrations/<id>/push``: dial the target's sink at one of ``addresses``."""

    addresses: list[str]
    sink: str
    secret: str

    def to_json(self) -> dict[str, Any]:
        return {"addresses": list(self.addresses), "sink": self.sink, "secret": self.secret}
