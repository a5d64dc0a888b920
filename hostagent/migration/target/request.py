"""What a pull request names: the source agent's migration, its certificate, and the job's options.

Everything here comes from the trusted caller (the orchestrator's worker), but is checked as strictly as
a peer's input: a malformed URL or certificate is a 400 before any connection is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hostagent.migration.messages import FINGERPRINT
from hostagent.transfer.compression import check_wish
from hostagent.transfer.registry import PREFERENCE
from orchapi import certs
from orchapi.errors import BadRequest

#: who dials: the target (pull), or the source (push) or a relaying worker (relay) into a sink
MODES = ("pull", "push", "relay")
_OPERATION_PATH = re.compile(r"^/1\.0/migrations/[0-9a-fA-F-]{36}\Z")


@dataclass
class SourceRef:
    """Where the source is and how to prove who we are to it."""

    url: str  # https://host:port/1.0/migrations/<id>
    token: str
    certificate: str
    fingerprint: str

    @property
    def where(self) -> str:
        if not self.url:
            return "the agent that pushes it"
        parts = urlsplit(self.url)
        return parts.netloc


def _source_ref(source: dict[str, Any], token: Any) -> SourceRef:
    url = source.get("operation")
    if not isinstance(url, str):
        raise BadRequest("source.operation must be the URL of the source's migration")
    parts = urlsplit(url)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
        or not _OPERATION_PATH.match(parts.path)
    ):
        raise BadRequest(
            f"invalid source.operation {url!r}", "expected https://HOST:PORT/1.0/migrations/<migration id>"
        )
    if not isinstance(token, str) or not token or len(token) > 512:
        raise BadRequest("the migration secret is missing")
    pem = source.get("certificate")
    if not isinstance(pem, str) or not pem:
        raise BadRequest("source.certificate must be the source agent's PEM certificate")
    return SourceRef(url.rstrip("/"), token, pem, certs.fingerprint_pem(pem))


@dataclass
class PullSpec:
    """A container to receive: pulled from ``source`` (mode pull), or pushed by it (mode push: the
    source dials this agent's sink, and ``source`` holds only its certificate)."""

    source: SourceRef
    base_image: str
    refresh: bool
    #: the transfer method the user asked for (None: negotiate)
    method: str | None = None
    #: the operator opted in to elevated containers for this job (``--allow-privileged``)
    allow_privileged: bool = False
    #: the job's compression wish (``--compress``: auto, zstd, none)
    compression: str = "auto"
    #: pushed: the peer dialed this agent (no data links then: this agent may not reach the peer)
    pushed: bool = False
    #: the transfer mode (pull, push, relay), checked against this host's migration.modes
    mode: str = "pull"


def parse_pull(source: dict[str, Any]) -> PullSpec:
    """The ``source`` object of ``POST /1.0/containers`` for ``type: migration``."""
    mode = source.get("mode", "pull")
    if mode not in MODES:
        raise BadRequest(f"migration mode {mode!r} is not supported", "use pull, push or relay")
    secrets = source.get("secrets") if mode == "pull" else {"fs": ""}
    if not isinstance(secrets, dict):
        raise BadRequest("source.secrets must hold the 'fs' migration secret")
    base_image = source.get("base-image") or ""
    if not isinstance(base_image, str) or (base_image and not FINGERPRINT.match(base_image)):
        raise BadRequest("source.base-image must be an image fingerprint")
    refresh = source.get("refresh", False)
    if not isinstance(refresh, bool):
        raise BadRequest("source.refresh must be true or false")
    method = source.get("method") or None
    if method is not None and (not isinstance(method, str) or method not in PREFERENCE):
        raise BadRequest(f"unknown transfer method {method!r}", "use one of " + ", ".join(PREFERENCE))
    allow = source.get("allow_privileged", False)
    if not isinstance(allow, bool):
        raise BadRequest("source.allow_privileged must be true or false")
    compression = check_wish(source.get("compression"))
    ref = _source_ref(source, secrets.get("fs")) if mode == "pull" else _pusher_ref(source)
    return PullSpec(ref, base_image, refresh, method, allow, compression, pushed=mode != "pull", mode=mode)


def _pusher_ref(source: dict[str, Any]) -> SourceRef:
    """Push mode: only the certificate of the peer that will dial (the source agent, or a relaying
    worker); the sink's token is made here, not brought."""
    for key in ("operation", "secrets"):
        if source.get(key):
            raise BadRequest(f"source.{key} is for pull mode; a push sink makes its own secret")
    pem = source.get("certificate")
    if not isinstance(pem, str) or not pem:
        raise BadRequest("source.certificate must be the PEM certificate of the agent that will push")
    return SourceRef("", "", pem, certs.fingerprint_pem(pem))


def parse_image_pull(source: dict[str, Any]) -> tuple[SourceRef, str]:
    """The ``source`` object of ``POST /1.0/images`` for ``type: migration``."""
    fingerprint = source.get("fingerprint")
    if not isinstance(fingerprint, str) or not FINGERPRINT.match(fingerprint):
        raise BadRequest("source.fingerprint must be the image's full SHA-256 fingerprint")
    return _source_ref(source, source.get("secret")), fingerprint
