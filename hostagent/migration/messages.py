"""The migration conversation's structured messages, as types both sides share: header, accept, volume-end.

The source builds them and sends :meth:`to_message`; the target reads them with :meth:`from_message`
(and the other way round for :class:`Accept`), so what one side writes and what the other checks are one
definition. The wire format is the protocol's (hostagent/migration/protocol.py, :data:`PROTOCOL_VERSION`):
the same keys in the same order with the same JSON types, so agents of either shape talk to each other.

The peer is authenticated, not trusted: :meth:`from_message` checks every field it uses, and a malformed
message is a :class:`~orchapi.errors.BadRequest` or a :class:`ProtocolError` (the peer's fault), never an
internal error. What a valid header asks for is then decided by the target's policy
(hostagent/migration/policy.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from hostagent.migration.protocol import PROTOCOL_VERSION, ProtocolError, require
from hostagent.runtimes.base import LAYOUT_ROOTFS
from hostagent.runtimes.idmap import IdMap
from hostagent.transfer.features import ZSTD
from orchapi.errors import BadRequest
from orchapi.names import check_snapshot_name

#: an image's full SHA-256 fingerprint
FINGERPRINT = re.compile(r"^[0-9a-f]{64}\Z")


class DeclaredVolume(NamedTuple):
    """One volume as the header declares it: the target receives at most about that much."""

    snapshot: str | None  # None: the container's rootfs
    size: int  # bytes on disk
    entries: int


@dataclass
class Header:
    """What the source says the container is (the first message, source to target)."""

    TYPE: ClassVar[str] = "header"

    #: created_at, architecture, init, base_image and config (the record the target's copy gets)
    container: dict[str, Any]
    snapshots: list[dict[str, str]]
    #: the snapshots oldest first, then the rootfs
    volumes: list[DeclaredVolume]
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
    #: the container's name on the source (informative: the target names its copy itself)
    name: str = ""
    #: the source's storage driver (informative)
    storage: str = ""
    #: whether a bandwidth limit applies to what the source sends (the job's or its agent's): the target
    #: then compresses under ``--compress auto``
    limited: bool = False

    def to_message(self) -> dict[str, Any]:
        c = self.container
        return {
            "type": self.TYPE,
            "protocol": PROTOCOL_VERSION,
            "container": {
                "name": self.name,
                "created_at": c["created_at"],
                "base_image": c["base_image"],
                "architecture": c["architecture"],
                "config": c["config"],
                "init": c["init"],
            },
            "snapshots": [{"name": s["name"], "created_at": s["created_at"]} for s in self.snapshots],
            "volumes": [{"snapshot": v.snapshot, "size": v.size, "entries": v.entries} for v in self.volumes],
            "methods": list(self.methods),
            "methods_reason": self.methods_reason,
            "storage": self.storage,
            "base_image": self.base_image,
            "idmap": self.idmap,
            "layout": self.layout,
            "instance": self.instance,
            "size": self.size,
            "features": sorted(self.features),
            "link": {"port": self.link_port} if self.link_port is not None else None,
            **({"limited": True} if self.limited else {}),  # absent when not: the older wire stays
        }

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Header:
        """The source's header, checked field by field (:class:`BadRequest` for anything malformed)."""
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
        volumes: list[DeclaredVolume] = []
        for v in require(msg, "volumes", list):
            size = v.get("size") if isinstance(v, dict) else None
            entries = v.get("entries") if isinstance(v, dict) else None
            if not _count(size, 2**62) or not _count(entries, 2**40):
                raise BadRequest("migration header: invalid volume entry (size and entries must be counts)")
            volumes.append(DeclaredVolume(v.get("snapshot"), size, entries))
        if [v.snapshot for v in volumes] != [*names, None]:
            raise BadRequest(
                "migration header: the volumes must be the snapshots, oldest first, then the rootfs"
            )
        methods = [m for m in require(msg, "methods", list) if isinstance(m, str)]
        layout = msg.get("layout") or LAYOUT_ROOTFS
        if not isinstance(layout, str):
            raise BadRequest("migration header: invalid layout")
        instance = msg.get("instance")
        if instance is not None and not isinstance(instance, dict):
            raise BadRequest("migration header: invalid instance description")
        name = c.get("name")
        storage = msg.get("storage")
        return cls(
            container=container,
            snapshots=snapshots,
            volumes=volumes,
            methods=methods,
            base_image=base_image,
            idmap=_idmap(msg.get("idmap")),
            size=sum(v.size for v in volumes),
            features=_strings(msg.get("features"), "migration header: invalid features"),
            layout=layout,
            instance=instance,
            methods_reason=str(msg.get("methods_reason") or "")[:500],
            link_port=_link_port(msg.get("link")),
            name=name[:256] if isinstance(name, str) else "",
            storage=storage[:128] if isinstance(storage, str) else "",
            limited=msg.get("limited") is True,
        )


@dataclass
class Accept:
    """The method the target chose and what it wants sent (target to source, after the header)."""

    TYPE: ClassVar[str] = "accept"

    method: str
    #: snapshots the target has already (a refresh): not sent again
    skip: list[str] = field(default_factory=list)
    #: the features both filesystems keep (xattrs, acls)
    features: frozenset[str] = frozenset()
    #: whether the source may send device nodes (privileged containers only); None: not said (sent as
    #: absent, read as False)
    devices: bool | None = None
    #: whether the target dials data-link offers; None: not said (sent as absent, read as False)
    link: bool | None = None
    #: the streams' compression, "zstd" or "" (hostagent/transfer/compression.py; absent: none)
    compression: str = ""

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": self.TYPE,
            "method": self.method,
            "skip": list(self.skip),
            "features": sorted(self.features),
        }
        if self.devices is not None:
            msg["devices"] = self.devices
        if self.link is not None:
            msg["link"] = self.link
        if self.compression:
            msg["compression"] = self.compression
        return msg

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Accept:
        """The target's accept, checked (whether the source offers the method and has the skipped
        snapshots is the source's to decide)."""
        method = require(msg, "method", str)
        skip = msg.get("skip") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise ProtocolError("migration protocol error: the target skips unknown snapshots")
        compression = msg.get("compression") or ""
        if compression not in ("", ZSTD):
            raise ProtocolError(f"migration protocol error: unknown compression {str(compression)[:32]!r}")
        return cls(
            method,
            skip,
            _strings(msg.get("features"), "migration protocol error: invalid features in accept"),
            msg.get("devices") is True,
            msg.get("link") is True,
            compression,
        )


@dataclass
class VolumeEnd:
    """The source's manifest summary of the volume it just sent (source to target)."""

    TYPE: ClassVar[str] = "volume-end"

    index: int
    digest: str
    count: int
    #: the seconds the source's bandwidth limits have held its sending back so far (informative)
    throttled: float = 0.0

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": self.TYPE, "index": self.index, "digest": self.digest}
        msg["count"] = self.count
        if self.throttled > 0:  # absent when not: the older wire stays
            msg["throttled"] = round(self.throttled, 3)
        return msg

    @classmethod
    def from_message(cls, msg: dict[str, Any], index: int) -> VolumeEnd:
        """The source's volume-end for volume ``index`` (:class:`ProtocolError` for another one)."""
        if msg.get("index") != index:
            raise ProtocolError("migration protocol error: volume-end for another volume")
        throttled = msg.get("throttled")
        if not isinstance(throttled, int | float) or isinstance(throttled, bool) or not 0 <= throttled < 1e9:
            throttled = 0.0
        return cls(index, require(msg, "digest", str), require(msg, "count", int), float(throttled))


# ---------------------------------------------------------------------------------------------- fields


def _idmap(idmap: Any) -> dict[str, int] | None:
    if idmap is None:
        return None
    try:
        parsed = IdMap.from_json(idmap)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise BadRequest("migration header: invalid idmap") from None
    if not (0 <= parsed.host_base < 2**32 and 0 <= parsed.gid_host_base < 2**32 and 0 < parsed.size <= 2**32):
        raise BadRequest("migration header: invalid idmap")
    return parsed.to_json()


def _strings(value: Any, invalid: str) -> frozenset[str]:
    """A list's strings (other items are ignored, as an older or newer peer may send them); anything
    else but an empty value is malformed."""
    if not value:
        return frozenset()
    if not isinstance(value, list):
        raise BadRequest(invalid)
    return frozenset(x for x in value if isinstance(x, str))


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
