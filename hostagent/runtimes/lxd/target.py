"""What an LXD host does with a received container: stage it in LXD's layout inside the pool, then have
LXD adopt it (hostagent/lxd/adoption.py) with its config, profiles and snapshots."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostagent.lxd import idmap as lxd_idmap
from hostagent.lxd import recover
from hostagent.lxd.adoption import LxdStaging
from hostagent.lxd.client import path_of
from hostagent.lxd.pool import CONTAINERS, ROOTFS, SNAPSHOTS
from hostagent.runtimes import modes
from hostagent.runtimes.base import (
    RUNNING,
    ContainerRecord,
    ImportStaging,
)
from hostagent.runtimes.idmap import IdMap
from hostagent.runtimes.lxd.base import (
    LxdBase,
    disk_idmap,
    lxd_timestamp,
    root_pool,
)
from hostagent.runtimes.staging import prefill_volume
from orchapi.errors import BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)


class LxdTarget(LxdBase):
    def import_config(self, container: dict[str, Any], instance: dict[str, Any] | None) -> dict[str, str]:
        """LXD keeps the whole config (it validates it at adoption); profiles must exist here."""
        config = self.validate_config(container.get("config") or {})
        for profile in (instance or {}).get("profiles") or ["default"]:
            if not isinstance(profile, str):
                raise BadRequest("migration header: invalid profile name")
            try:
                self.client.get(path_of("profiles", profile))
            except NotFound:
                raise BadRequest(
                    f"profile {profile!r} of the container does not exist on the target LXD",
                    "create it there first (lxc profile copy)",
                ) from None
        return config

    def import_check(self, name: str, refresh: bool) -> dict[str, Any] | None:
        try:
            inst = self._instance(name)
        except NotFound:
            if os.path.lexists(self._volume_dir(name, None)):
                raise Conflict(f"LXD pool {self.pool.name} holds a volume named {name}") from None
            return None
        if not refresh:
            raise Conflict(f"container {name} already exists")
        if inst.get("status") == RUNNING:
            raise Conflict(f"container {name} is running; stop it first to refresh it")
        config = inst.get("config") or {}
        idmap = disk_idmap(config, name)
        return {
            "name": name,
            "snapshots": [{"name": s["name"]} for s in self._snapshots(name)],
            "idmap": idmap.to_json() if idmap else None,
        }

    def import_begin(self, name: str, refresh: bool) -> ImportStaging:
        existing = self.import_check(name, refresh)
        tmp = modes.private_dir(self.work / "staging" / f"{name}-{secrets.token_hex(4)}")
        modes.private_dir(tmp / CONTAINERS)
        modes.private_dir(tmp / SNAPSHOTS / name)
        return LxdStaging(name, tmp, existing, self.pool.dir if existing is not None else None)

    def import_prefill(
        self,
        staging: ImportStaging,
        snapshot: str | None,
        base: Path | None,
        base_idmap: dict[str, int] | None,
        image: str | None,
        idmap: dict[str, int] | None,
    ) -> Path:
        assert isinstance(staging, LxdStaging)
        self.pool.make_volume(staging.volume_dir(snapshot))
        return prefill_volume(self.trees, self.images, staging, snapshot, base, base_idmap, image, idmap)

    def import_receive_dir(self, staging: ImportStaging, snapshot: str | None) -> Path:
        path = staging.path / f"recv-{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        return path

    def import_place(self, staging: ImportStaging, snapshot: str | None, received: Path) -> None:
        assert isinstance(staging, LxdStaging)
        if received == staging.volume(snapshot):
            return  # rsync/tar filled the volume in place
        # btrfs: ``received`` is a read-only copy of the source's LXD volume; a snapshot of it takes its
        # place (read-only for snapshots, writable for the container)
        self.pool.snapshot(received, staging.volume_dir(snapshot), readonly=snapshot is not None)

    def import_commit(
        self, staging: ImportStaging, data: dict[str, Any], source_idmap: dict[str, int] | None
    ) -> ContainerRecord:
        assert isinstance(staging, LxdStaging)
        name = staging.name
        instance = dict(data.get("instance") or {})
        config = dict(data.get("config") or {})
        for key in ("volatile.idmap.current", "volatile.idmap.next", "volatile.last_state.power"):
            config.pop(key, None)
        config["volatile.last_state.idmap"] = lxd_idmap.dump(
            IdMap.from_json(source_idmap) if source_idmap else None
        )
        if data.get("base_image"):
            config["volatile.base_image"] = data["base_image"]
        names = list(instance.get("profiles") or ["default"])
        profiles = [self.client.get(path_of("profiles", p)) for p in names]
        profile_pool = root_pool(profiles)
        snapshots = self._snapshot_docs(data, instance, config, profile_pool)
        inst = {
            "name": name,
            "architecture": data.get("architecture") or "x86_64",
            "config": config,
            "devices": self._root_here(instance.get("devices") or {}, profile_pool),
            "ephemeral": bool(instance.get("ephemeral", False)),
            "profiles": names,
            "stateful": False,
            "description": str(instance.get("description") or ""),
            "created_at": data.get("created_at") or lxd_timestamp(),
        }
        vdir = staging.volume_dir(None)
        if (vdir / ROOTFS).is_symlink() or not (vdir / ROOTFS).is_dir():
            raise BadRequest(f"the received container {name} has no rootfs directory")
        self._write_metadata(vdir, instance, inst)
        recover.write_backup(vdir, inst, snapshots, self.pool.info, profiles)
        if self.storage_name == "dir":  # btrfs snapshots are read-only, with the source's modes
            for path in staging.snapshots_dir.iterdir():
                os.chmod(path, 0o700)
        os.chmod(vdir, 0o100)
        for leftover in staging.path.glob("recv-*"):
            self.pool.remove(leftover)
        started = time.monotonic()
        self.adopter.adopt(staging)
        log.info("LXD adopted container %s in %.0f ms", name, (time.monotonic() - started) * 1000)
        self.pool.remove(staging.path)  # what is left: the emptied staging dirs
        return self.get(name)

    def _snapshot_docs(
        self, data: dict[str, Any], instance: dict[str, Any], config: dict[str, str], profile_pool: str | None
    ) -> list[dict[str, Any]]:
        """The snapshots LXD records, oldest first: the source's LXD description where it sent one."""
        described = {s.get("name"): s for s in instance.get("snapshots") or [] if isinstance(s, dict)}
        out = []
        for snap in data.get("snapshots") or []:
            doc = dict(described.get(snap["name"]) or {})
            doc["config"] = {
                **config,
                **{k: v for k, v in (doc.get("config") or {}).items() if "idmap" not in k},
            }
            doc["devices"] = self._root_here(
                doc.get("devices") or instance.get("devices") or {}, profile_pool
            )
            doc.update(name=snap["name"], created_at=snap["created_at"])
            doc.setdefault("architecture", data.get("architecture") or "x86_64")
            doc.setdefault("profiles", list(instance.get("profiles") or ["default"]))
            out.append(doc)
        return out

    def _devices(self, devices: dict[str, Any], profiles: list[str]) -> dict[str, Any]:
        """:meth:`_root_here` for an instance with these profiles (read from LXD)."""
        docs = []
        for profile in profiles:
            with suppress(NotFound):
                docs.append(self.client.get(path_of("profiles", profile)))
        return self._root_here(devices, root_pool(docs))

    def _root_here(self, devices: dict[str, Any], profile_pool: str | None) -> dict[str, Any]:
        """The instance's own devices with its root disk on our pool: its own root device repointed, or
        one added when its profiles put the root disk (``profile_pool``) elsewhere."""
        out = {k: dict(v) for k, v in devices.items() if isinstance(v, dict)}
        root = out.get("root")
        if root and root.get("type") == "disk" and root.get("path") == "/":
            root["pool"] = self.pool.name
        elif profile_pool != self.pool.name:
            out["root"] = {"type": "disk", "path": "/", "pool": self.pool.name}
        return out

    @staticmethod
    def _write_metadata(vdir: Path, instance: dict[str, Any], inst: dict[str, Any]) -> None:
        path = vdir / "metadata.yaml"
        if path.exists():
            return
        text = instance.get("metadata_yaml")
        if not isinstance(text, str) or not text:
            text = json.dumps(
                {"architecture": inst["architecture"], "creation_date": int(datetime.now(UTC).timestamp())}
            )
        path.write_text(text)

    def import_abort(self, staging: ImportStaging) -> None:
        if staging.path.parent == self.work / "staging":
            self.pool.remove(staging.path)
