"""Parsing the ``lxc`` reference grammar: ``[remote:]name[/snapshot]`` and ``remote:``."""

from __future__ import annotations

from dataclasses import dataclass

from orchapi.errors import BadRequest
from orchapi.names import check_container_name, check_snapshot_name
from orchestrator.clientconfig import ClientConfig


@dataclass(frozen=True)
class Ref:
    """A remote and, optionally, a container and one of its snapshots."""

    remote: str
    name: str = ""
    snapshot: str = ""

    def __str__(self) -> str:
        text = f"{self.remote}:{self.name}"
        return f"{text}/{self.snapshot}" if self.snapshot else text


def parse(text: str, config: ClientConfig) -> Ref:
    """Split ``text``; a prefix before ``:`` must be a configured remote (else a clear error)."""
    if not isinstance(text, str) or not text:
        raise BadRequest("empty container reference")
    remote = config.default_remote
    rest = text
    if ":" in text:
        remote, rest = text.split(":", 1)
        config.get(remote)  # unknown remote -> NotFound with a hint
    name, _, snapshot = rest.partition("/")
    if name:
        check_container_name(name)
    if "/" in rest:
        check_snapshot_name(snapshot)
    return Ref(remote, name, snapshot)


def parse_container(text: str, config: ClientConfig, allow_snapshot: bool = False) -> Ref:
    """A reference that must name a container (and a snapshot only where allowed)."""
    ref = parse(text, config)
    if not ref.name:
        raise BadRequest(f"{text!r} names no container", "use REMOTE:NAME")
    if ref.snapshot and not allow_snapshot:
        raise BadRequest(f"{text!r} names a snapshot; this command needs a container")
    return ref


def parse_remote(text: str, config: ClientConfig) -> str:
    """``remote:`` (or a bare remote name): returns the remote's name."""
    name = text[:-1] if text.endswith(":") else text
    if ":" in name or "/" in name or not name:
        raise BadRequest(f"{text!r} is not a remote", "use REMOTE:")
    config.get(name)
    return name
