"""Registering a container whose volumes were written straight into an LXD storage pool.

A migration target fills the instance's volume directories itself (pre-filled from the image, deltas
received by rsync/tar/btrfs), then asks LXD to adopt them with the disaster-recovery API that
``lxd recover`` uses (``/internal/recover/validate`` and ``/internal/recover/import``, on the unix
socket only): LXD reads the ``backup.yaml`` in the volume and creates the instance, its snapshots (with
their creation dates) and their volume records exactly as described there. The result is what
``lxc list``/``lxc info``/``lxc start`` expect of any container.

Recovery imports every unknown volume of the pool, so callers serialise it (one import at a time per
agent) and place a container's directories only just before calling it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hostagent.lxd.client import LxdClient
from orchapi.errors import BadRequest, Conflict, InternalError

log = logging.getLogger(__name__)

#: instance fields LXD's backup.yaml carries (api.Instance); the rest of a GET is live state
INSTANCE_FIELDS = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful", "description")


def write_backup(
    path: Path,
    instance: dict[str, Any],
    snapshots: list[dict[str, Any]],
    pool: dict[str, Any],
    profiles: list[dict[str, Any]],
) -> None:
    """Write ``backup.yaml`` (as JSON, which is YAML) into the instance volume at ``path``."""
    name = instance["name"]
    doc = {
        "container": {
            **{k: instance[k] for k in INSTANCE_FIELDS if k in instance},
            "name": name,
            "created_at": instance["created_at"],
            "last_used_at": "0001-01-01T00:00:00Z",
            "status": "Stopped",
            "status_code": 102,
            "type": "container",
            "project": "default",
            "location": "none",
        },
        "snapshots": [
            {
                **{k: s[k] for k in INSTANCE_FIELDS if k in s and k != "description"},
                "name": s["name"],
                "created_at": s["created_at"],
                "expires_at": s.get("expires_at") or "0001-01-01T00:00:00Z",
                "last_used_at": "0001-01-01T00:00:00Z",
                "size": -1,
            }
            for s in snapshots
        ],
        "pool": pool,
        "profiles": profiles,
        "volume": {
            "name": name,
            "type": "container",
            "config": {},
            "description": "",
            "content_type": "filesystem",
            "project": "default",
            "location": "none",
            "used_by": [],
        },
        "volume_snapshots": [
            {"name": s["name"], "config": {}, "description": "", "content_type": "filesystem"}
            for s in snapshots
        ],
    }
    tmp = path / "backup.yaml.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.chmod(0o400)
    tmp.rename(path / "backup.yaml")


def register(client: LxdClient, pool: dict[str, Any], name: str) -> None:
    """Make LXD adopt the container ``name`` whose volumes are in place in ``pool``."""
    body = {"pools": [{"name": pool["name"], "driver": pool["driver"], "config": pool.get("config") or {}}]}
    found = client.call("POST", "/internal/recover/validate", body) or {}
    errors = found.get("DependencyErrors") or []
    if errors:
        raise BadRequest(f"LXD cannot adopt container {name}: " + "; ".join(str(e) for e in errors))
    unknown = [v for v in found.get("UnknownVolumes") or [] if v.get("type") == "container"]
    if not any(v.get("name") == name for v in unknown):
        raise Conflict(f"LXD does not see the received volume of container {name} as new")
    others = [v.get("name") for v in unknown if v.get("name") != name]
    if others:
        log.warning("LXD recovery also adopts unknown volumes %s found in pool %s", others, pool["name"])
    client.call("POST", "/internal/recover/import", body, timeout=600)
    try:
        client.get(f"/1.0/instances/{name}")
    except Exception as exc:  # noqa: BLE001 - the reason is in the message
        raise InternalError(f"LXD imported container {name} but does not list it: {exc}") from exc
