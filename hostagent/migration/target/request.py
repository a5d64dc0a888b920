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
from orchapi.api.receive import ReceiveSource
from orchapi.errors import BadRequest

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


def _source_ref(url: Any, token: Any, pem: Any) -> SourceRef:
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
    """The ``source`` object of ``POST /1.0/containers`` for ``type: migration``: its shape checked by
    the shared type (orchapi/api/receive.py), what this agent accepts checked here."""
    got = ReceiveSource.from_json(source)
    if got.base_image and not FINGERPRINT.match(got.base_image):
        raise BadRequest("source.base-image must be an image fingerprint")
    if got.method is not None and got.method not in PREFERENCE:
        raise BadRequest(f"unknown transfer method {got.method!r}", "use one of " + ", ".join(PREFERENCE))
    compression = check_wish(got.compression)
    if got.mode == "pull":
        ref = _source_ref(got.operation, (got.secrets or {}).get("fs"), got.certificate)
    else:  # the peer that will dial: only its certificate; the sink's token is made here, not brought
        ref = SourceRef("", "", got.certificate, certs.fingerprint_pem(got.certificate))
    pushed = got.mode != "pull"
    return PullSpec(
        ref, got.base_image, got.refresh, got.method, got.allow_privileged, compression, pushed, got.mode
    )


def parse_image_pull(source: dict[str, Any]) -> tuple[SourceRef, str]:
    """The ``source`` object of ``POST /1.0/images`` for ``type: migration``."""
    fingerprint = source.get("fingerprint")
    if not isinstance(fingerprint, str) or not FINGERPRINT.match(fingerprint):
        raise BadRequest("source.fingerprint must be the image's full SHA-256 fingerprint")
    return _source_ref(source.get("operation"), source.get("secret"), source.get("certificate")), fingerprint
