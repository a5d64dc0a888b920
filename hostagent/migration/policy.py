"""What a receiving agent accepts from a migration: the target decides, never the source.

The source agent is a peer that may be compromised, so everything it says about the container is a
request, checked against what this host grants before any byte moves:

- **Privilege.** A privileged container (raw host ids, real device nodes), ``raw.*`` config,
  ``security.idmap.*``, ``linux.kernel_modules``, nesting, syscall interception, host-path disks,
  ``unix-*`` devices and the other device types that hand a container a host resource are *elevated*.
  They are refused unless the operator opted in for this job (``orch move … --allow-privileged``) or for
  this host (server config ``migration.allow_privileged=true``); the refusal names each item and both ways
  to allow it. An id map for a privileged container, or one reaching the host's own ids, is refused
  outright: the id map decides what the files may be. (Raw ids for an unprivileged container are fine:
  LXD keeps a never-started container unshifted; they are checked as container ids, 0..65535.)
- **Volumes.** For an unprivileged container every received volume may only hold owners inside the
  source's id range, no device nodes, and no file capability other than a namespaced (v3) one whose
  root id is the container's host root — checked while the data arrives where the method lets the agent
  see it (tar: member by member; btrfs: command by command; rsync: no ``-D``), and on the received
  volume's manifest before it is used. Every volume may bring at most its declared size plus a margin
  (:meth:`VolumeRules.allowance`): on the wire, on disk, and per file.

Nothing received is reachable before these checks: staging directories are private to root (see
hostagent/runtimes/modes.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hostagent import filecaps
from hostagent.migration.manifest import Manifest
from hostagent.runtimes.idmap import IdMap
from orchapi.errors import BadRequest, Forbidden

#: the server config key a host's operator sets to accept elevated containers from every migration
ALLOW_KEY = "migration.allow_privileged"
#: margin of a volume's allowance beyond its declared size: protocol framing and archive headers
VOLUME_MARGIN = 1024 * 1024
#: and per declared entry: a tar header with pax records, or a small file rounded to a 4 KiB block
ENTRY_MARGIN = 4096

_TRUE = ("true", "1", "yes", "on")
#: host ids an unprivileged container's map may not reach: the host's own users and groups
HOST_IDS = 65536
#: device types and NIC types a container may bring without being elevated (no host resource of its own)
_PLAIN_NICS = ("bridged", "macvlan", "ipvlan", "p2p", "routed")


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in _TRUE


def _elevated_entry(key: str, value: Any) -> bool:
    if key.startswith(("raw.", "security.idmap.")):
        return True
    if key == "linux.kernel_modules":  # the host loads these modules when the container starts
        return bool(str(value).strip())
    if key in ("security.privileged", "security.nesting", "nvidia.runtime"):
        return _truthy(value)
    if key.startswith("security.syscalls.intercept."):  # the host performs mount/mknod/... for it
        return _truthy(value)
    if key == "security.syscalls.deny_default":  # turning LXD's default denylist off
        return not _truthy(value)
    return False


def elevated_config(config: dict[str, Any]) -> list[str]:
    """The config entries that give a container more than an unprivileged one has, as ``key=value``."""
    return [
        f"{k}={v}" for k, v in sorted(config.items(), key=lambda kv: str(kv[0])) if _elevated_entry(str(k), v)
    ]


def _plain_device(device: Any) -> bool:
    """Its root disk on the pool, or a NIC on a bridge/network: nothing of the host's own."""
    if not isinstance(device, dict):
        return False
    kind = device.get("type")
    if kind == "none":
        return True
    if kind == "disk":
        return device.get("path") == "/" and not device.get("source")
    if kind == "nic":
        return bool(device.get("network")) or device.get("nictype", "bridged") in _PLAIN_NICS
    return False


def elevated_devices(devices: Any) -> list[str]:
    """The devices that hand the container a host resource (host-path disks, unix-*, gpu, usb, physical
    NICs, proxies ...), as ``device NAME (TYPE)``."""
    if devices is None:
        return []
    if not isinstance(devices, dict):
        return ["devices (not a mapping)"]
    out = []
    for name, device in sorted(devices.items(), key=lambda kv: str(kv[0])):
        if _plain_device(device):
            continue
        kind = device.get("type") if isinstance(device, dict) else None
        what = str(kind) if isinstance(kind, str) else "?"
        if kind == "disk":
            what = f"disk {device.get('source') or device.get('path')}"
        elif kind == "nic":
            what = f"nic {device.get('nictype')}"
        out.append(f"device {str(name)[:64]} ({what[:128]})")
    return out


@dataclass(frozen=True)
class Grants:
    """What this host lets a migration bring, for one job."""

    #: elevated containers (privileged, raw.*, host devices ...) are accepted
    elevated: bool
    #: where the grant comes from, for messages ("this job", "this host's policy", "")
    source: str = ""

    @classmethod
    def for_job(cls, job_allows: bool, server_config: dict[str, Any]) -> Grants:
        if job_allows:
            return cls(True, "the job's --allow-privileged")
        if _truthy(server_config.get(ALLOW_KEY, "")):
            return cls(True, f"this host's {ALLOW_KEY}")
        return cls(False)


def check_request(
    config: dict[str, Any], instance: dict[str, Any] | None, idmap: dict[str, int] | None, grants: Grants
) -> bool:
    """Refuse what the grants do not cover; returns whether the container is privileged.

    ``config`` is the container's config as the source sent it, ``instance`` the source runtime's
    description (devices, snapshots with their own config and devices), ``idmap`` the map the source
    says its files are in (None: raw ids).
    """
    privileged = _truthy(config.get("security.privileged", ""))
    if idmap is not None:
        mapped = IdMap.from_json(idmap)
        if min(mapped.host_base, mapped.gid_host_base) < HOST_IDS:
            raise BadRequest(
                f"migration header: the id map puts the container's ids on the host's own ids "
                f"(from {min(mapped.host_base, mapped.gid_host_base)}): its files would be the host's"
            )
    if privileged and idmap is not None:
        raise BadRequest("migration header: an id map for a privileged container (whose ids are the host's)")
    asked = elevated_config(config)
    inst = instance or {}
    asked += elevated_devices(inst.get("devices"))
    if isinstance(inst.get("config"), dict):  # LXD sources describe the instance's config again here
        asked += [e for e in elevated_config(inst["config"]) if e not in asked]
    for snap in inst.get("snapshots") or []:
        if not isinstance(snap, dict):
            continue
        label = f"snapshot {str(snap.get('name'))[:64]}"
        if isinstance(snap.get("config"), dict):
            asked += [f"{label}: {e}" for e in elevated_config(snap["config"])]
        asked += [f"{label}: {e}" for e in elevated_devices(snap.get("devices"))]
    if asked and not grants.elevated:
        raise Forbidden(
            "this host does not accept a migrated container with "
            + ", ".join(asked[:8])
            + (f" and {len(asked) - 8} more" if len(asked) > 8 else ""),
            f"allow it for this job with --allow-privileged (orch copy/move), or on this host with "
            f"`orch config set <host>: {ALLOW_KEY} true`",
        )
    return privileged


#: the ids of an unprivileged container's files before they are shifted into its map (an LXD container
#: never started keeps them so on disk): 0..65535, checked like a map based at host uid 0
RAW_IDS = IdMap(0, HOST_IDS)


def volume_idmap(idmap: dict[str, int] | None, privileged: bool) -> IdMap | None:
    """The ids a received volume's files may have: the source's map, the raw container ids of an
    unprivileged container sent unshifted, or None (a privileged container: anything)."""
    if idmap is not None:
        return IdMap.from_json(idmap)
    return None if privileged else RAW_IDS


@dataclass(frozen=True)
class VolumeRules:
    """What one received volume may hold and bring."""

    #: the id map the volume's owners are in (the source's); None: privileged, anything goes
    idmap: IdMap | None
    #: the declared size (bytes on the source's disk) and number of entries
    size: int
    entries: int

    @property
    def privileged(self) -> bool:
        return self.idmap is None

    @property
    def allowance(self) -> int:
        """The most bytes this volume may bring: on the wire, on disk, and in any one file."""
        return self.size + ENTRY_MARGIN * self.entries + VOLUME_MARGIN

    @property
    def cap_rootid(self) -> int | None:
        """The only root id a file capability may name (the container's host root); None: any."""
        return None if self.idmap is None else self.idmap.host_base

    def uid_range(self) -> range | None:
        if self.idmap is None:
            return None
        return range(self.idmap.host_base, self.idmap.host_base + self.idmap.size)

    def gid_range(self) -> range | None:
        if self.idmap is None:
            return None
        return range(self.idmap.gid_host_base, self.idmap.gid_host_base + self.idmap.size)


def check_received(manifest: Manifest, rules: VolumeRules, what: str, root: str | None = None) -> None:
    """Refuse a received volume that holds what ``rules`` do not allow (its manifest, computed here).

    ``root`` names the container's tree inside the volume when the volume holds more (an LXD volume:
    ``rootfs/`` beside metadata owned by the host's root, which may only be plain files and
    directories). The volume is still in the staging dir, where nobody else can reach it.
    """
    if manifest.allocated > rules.allowance:
        raise BadRequest(
            f"received {what} uses {manifest.allocated} bytes on disk, more than the {rules.size} the "
            "source declared; it was discarded"
        )
    if rules.privileged:
        return
    uids, gids, rootid = rules.uid_range(), rules.gid_range(), rules.cap_rootid
    assert uids is not None and gids is not None
    for line in manifest.lines:
        entry = json.loads(line)
        path, kind, _mode, uid, gid = entry[:5]
        caps = entry[10]
        if root is not None and path == root and kind != "d":
            raise BadRequest(f"received {what}: {root!r} is not a directory (type {kind!r})")
        if root is not None and path != root and not path.startswith(root + "/"):
            if kind not in ("f", "d") or caps is not None:
                raise BadRequest(f"received {what} holds {path!r} of type {kind!r} outside its rootfs")
            continue
        if kind in ("c", "b"):
            raise BadRequest(f"received {what} holds a device node {path!r}: the container is unprivileged")
        if uid not in uids or gid not in gids:
            raise BadRequest(
                f"received {what} holds {path!r} owned by {uid}:{gid}, outside the container's id range"
            )
        if caps is not None:
            why = filecaps.refusal(bytes.fromhex(caps), rootid)
            if why:
                raise BadRequest(f"received {what}: {path!r} {why}")
