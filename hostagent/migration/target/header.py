"""The source's header: what it says the container is, checked field by field before anything else.

The peer is authenticated, not trusted: every field is type- and range-checked here, and what it asks
for is then decided by the target's policy (hostagent/migration/policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostagent.migration.protocol import PROTOCOL_VERSION, require
from hostagent.migration.target.request import FINGERPRINT
from hostagent.runtimes.base import LAYOUT_ROOTFS
from hostagent.runtimes.idmap import IdMap
from orchapi.errors import BadRequest
from orchapi.names import check_snapshot_name


@dataclass
class Header:
    container: dict[str, Any]
    snapshots: list[dict[str, str]]
    #: (snapshot or None for the rootfs, declared bytes on disk, declared entries), oldest first
    volumes: list[tuple[str | None, int, int]]
    methods: list[str]
    base_image: str
    idmap: dict[str, int] | None
    size: int
    features: frozenset[str]
    #: what a btrfs stream of a volume holds (a bare rootfs, or LXD's volume)
    layout: str
    #: the source runtime's description of the instance (LXD's profiles, devices ...), or None
    instance: dict[str, Any] | None
    #: why the source offers only some of its methods for this container ("" if it offers all)
    methods_reason: str = ""
    #: the source's data port (hostagent/datalink/), or None: the bytes go over the websocket
    link_port: int | None = None


def parse_header(msg: dict[str, Any]) -> Header:
    """The source's header, checked field by field (the peer is not trusted to send sane values)."""
    if msg.get("protocol") != PROTOCOL_VERSION:
        raise BadRequest(
            f"the source speaks migration protocol {msg.get('protocol')!r}; "
            f"this agent speaks {PROTOCOL_VERSION}"
        )
    c = require(msg, "container", dict)
    for key in ("created_at", "architecture"):
        if not isinstance(c.get(key), str) or not c[key] or len(c[key]) > 128:
            raise BadRequest(f"migration header: invalid container {key}")
    init = c.get("init")
    if not isinstance(init, str) or not init.startswith("/") or len(init) > 4096 or "\x00" in init:
        raise BadRequest("migration header: invalid container init")
    base_image = msg.get("base_image") or ""
    if not isinstance(base_image, str) or (base_image and not FINGERPRINT.match(base_image)):
        raise BadRequest("migration header: invalid base_image")
    container = {
        "created_at": c["created_at"],
        "architecture": c["architecture"],
        "init": init,
        "base_image": base_image,
        "config": _string_map(c.get("config") or {}),
    }
    snapshots = []
    for s in require(msg, "snapshots", list):
        if not isinstance(s, dict) or not isinstance(s.get("created_at"), str):
            raise BadRequest("migration header: invalid snapshot entry")
        snapshots.append({"name": check_snapshot_name(s.get("name")), "created_at": s["created_at"]})
    names = [s["name"] for s in snapshots]
    if len(set(names)) != len(names):
        raise BadRequest("migration header: duplicate snapshot names")
    volumes: list[tuple[str | None, int, int]] = []
    for v in require(msg, "volumes", list):
        size = v.get("size") if isinstance(v, dict) else None
        entries = v.get("entries") if isinstance(v, dict) else None
        if not _count(size, 2**62) or not _count(entries, 2**40):
            raise BadRequest("migration header: invalid volume entry (size and entries must be counts)")
        volumes.append((v.get("snapshot"), size, entries))
    if [v[0] for v in volumes] != [*names, None]:
        raise BadRequest("migration header: the volumes must be the snapshots, oldest first, then the rootfs")
    methods = [m for m in require(msg, "methods", list) if isinstance(m, str)]
    idmap = msg.get("idmap")
    if idmap is not None:
        try:
            parsed = IdMap.from_json(idmap)
        except (KeyError, TypeError, ValueError):
            raise BadRequest("migration header: invalid idmap") from None
        if not (
            0 <= parsed.host_base < 2**32 and 0 <= parsed.gid_host_base < 2**32 and 0 < parsed.size <= 2**32
        ):
            raise BadRequest("migration header: invalid idmap")
        idmap = parsed.to_json()
    features = frozenset(f for f in msg.get("features") or [] if isinstance(f, str))
    layout = msg.get("layout") or LAYOUT_ROOTFS
    if not isinstance(layout, str):
        raise BadRequest("migration header: invalid layout")
    instance = msg.get("instance")
    if instance is not None and not isinstance(instance, dict):
        raise BadRequest("migration header: invalid instance description")
    return Header(
        container,
        snapshots,
        volumes,
        methods,
        base_image,
        idmap,
        sum(v[1] for v in volumes),
        features,
        layout,
        instance,
        str(msg.get("methods_reason") or "")[:500],
        _link_port(msg.get("link")),
    )


def _link_port(link: Any) -> int | None:
    if link is None:
        return None
    port = link.get("port") if isinstance(link, dict) else None
    if not _count(port, 65535) or port == 0:
        raise BadRequest("migration header: invalid data link")
    return port


def _count(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _string_map(config: Any) -> dict[str, str]:
    if not isinstance(config, dict) or len(config) > 4096:
        raise BadRequest("migration header: the container config must be a mapping of strings")
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str) or len(key) > 256 or len(value) > 1 << 20:
            raise BadRequest(f"migration header: invalid container config entry {str(key)[:64]!r}")
    return dict(config)
