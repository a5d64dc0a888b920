"""The ``lxd-migration`` method's runtime side: LXD's own migration operations, offered by the source
LXD and pulled by the target LXD (hostagent/transfer/lxd_migration.py drives them)."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from hostagent.lxd.client import path_of
from hostagent.lxd.pool import ROOTFS
from hostagent.runtimes.base import (
    RUNNING,
    ContainerRecord,
)
from hostagent.runtimes.lxd.base import (
    LxdBase,
)
from orchapi.errors import Conflict, InternalError, OrchError


class LxdOwnMigration(LxdBase):
    def lxd_migration_offer(self, name: str, snapshot: str | None, instance_only: bool) -> dict[str, Any]:
        inst = self._instance(name)
        if snapshot is None and inst.get("status") == RUNNING:
            raise Conflict(f"container {name} is running; stop it first (or move with --stateless)")
        server = self.client.server()
        addresses = (server.get("environment") or {}).get("addresses") or []
        if not addresses:
            raise Conflict(
                "the source LXD does not listen on the network, so the target LXD cannot pull from it",
                "set core.https_address on it, or use another --method",
            )
        if snapshot is None:
            path, body = path_of("instances", name), {"migration": True, "live": False}
            body["instance_only"] = instance_only
        else:
            path, body = path_of("instances", name, "snapshots", snapshot), {"migration": True}
        doc = self.client.request("POST", path, json=body)
        op = doc.get("metadata") or {}
        secrets_ = op.get("metadata") or {}
        if doc.get("type") != "async" or not op.get("id") or not secrets_:
            raise InternalError("LXD did not start a migration operation")
        return {
            "id": op["id"],
            "operation": f"https://{addresses[0]}/1.0/operations/{op['id']}",
            "addresses": [str(a) for a in addresses],
            "secrets": {str(k): str(v) for k, v in secrets_.items()},
            "certificate": server["environment"]["certificate"],
        }

    def lxd_migration_cancel(self, operation_id: str) -> None:
        with suppress(OrchError):
            self.client.request("DELETE", path_of("operations", operation_id))

    def volume_paths(self, name: str, snapshots: list[str]) -> list[tuple[str | None, Path]]:
        paths: list[tuple[str | None, Path]] = [(s, self._volume_dir(name, s) / ROOTFS) for s in snapshots]
        return [*paths, (None, self._volume_dir(name, None) / ROOTFS)]

    def lxd_migration_pull(
        self,
        name: str,
        data: dict[str, Any],
        offer: dict[str, Any],
        refresh: bool,
        progress: Callable[[int], None] | None = None,
        on_operation: Callable[[str], None] | None = None,
    ) -> ContainerRecord:
        instance = dict(data.get("instance") or {})
        config = {
            k: v
            for k, v in (data.get("config") or {}).items()
            if not k.startswith("volatile.") or k in ("volatile.base_image", "volatile.last_state.idmap")
        }
        if data.get("base_image"):
            config["volatile.base_image"] = data["base_image"]
        body = {
            "name": name,
            "type": "container",
            "architecture": data.get("architecture") or "x86_64",
            "config": config,
            "devices": self._devices(
                instance.get("devices") or {}, list(instance.get("profiles") or ["default"])
            ),
            "profiles": list(instance.get("profiles") or ["default"]),
            "ephemeral": bool(instance.get("ephemeral", False)),
            "description": str(instance.get("description") or ""),
            "source": {
                "type": "migration",
                "mode": "pull",
                "operation": offer["operation"],
                "secrets": offer["secrets"],
                "certificate": offer["certificate"],
                "base-image": data.get("base_image") or "",
                "live": False,
                "instance_only": not data.get("snapshots"),
                "refresh": refresh,
            },
        }
        doc = self.client.request("POST", "/1.0/instances", json=body)
        if on_operation is not None and (doc.get("metadata") or {}).get("id"):
            on_operation(doc["metadata"]["id"])
        self.client.wait(doc, 24 * 3600, on_progress=fs_progress(progress) if progress else None)
        return self.get(name)


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKMGTPE]?)(i?)B\b")
_UNITS = {"": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def fs_progress(report: Callable[[int], None]) -> Callable[[dict[str, Any]], None]:
    """LXD's migration progress (``fs_progress: "c1: 35.65MB (12.1MB/s)"``) as a byte count."""

    def on_metadata(metadata: dict[str, Any]) -> None:
        text = str(metadata.get("fs_progress") or "")
        found = _SIZE.search(text.split(":", 1)[-1])
        if found:
            number, unit, binary = found.groups()
            report(int(float(number) * (1024 if binary else 1000) ** _UNITS[unit]))

    return on_metadata
