"""What an LXD host sends: the instance's volumes in the pool and its LXD description."""

from __future__ import annotations

import secrets
from contextlib import suppress
from pathlib import Path
from typing import Any

from hostagent.lxd.pool import ROOTFS, Pool
from hostagent.runtimes.base import (
    LAYOUT_LXD,
    RUNNING,
    STOPPED,
    ExportPlan,
    ExportVolume,
    SnapshotRecord,
)
from hostagent.runtimes.lxd.base import (
    INSTANCE_KEYS,
    LxdBase,
    disk_idmap,
)
from orchapi.errors import BadRequest, Conflict, NotFound


class LxdSource(LxdBase):
    def _volume_dir(self, name: str, snapshot: str | None, pool: str | None = None) -> Path:
        """Where LXD keeps a container's (or snapshot's) volume, in our pool or the one named."""
        if pool is None or pool == self.pool.name:
            return self.pool.volume_dir(name, snapshot)
        return Pool(self.lxd_dir, {"name": pool}).volume_dir(name, snapshot)

    def export_plan(self, name: str, snapshot: str | None, instance_only: bool) -> ExportPlan:
        inst = self._instance(name)
        if inst.get("project", "default") != "default":
            raise BadRequest(f"container {name} is in project {inst['project']}; orch moves the default only")
        pool = self._pool_of(inst)
        only_reason = ""
        if pool != self.pool.name:
            only_reason = f"container {name} is on LXD pool {pool!r}, not {self.pool.name!r}"
        snaps = self._snapshots(name)
        config = dict(inst.get("config") or {})
        if snapshot is not None:
            if not any(s["name"] == snapshot for s in snaps):
                raise NotFound(f"snapshot {name}/{snapshot} not found")
            records: list[dict[str, Any]] = []
            volumes = [self._export_volume(None, self._volume_dir(name, snapshot, pool))]
        else:
            if inst.get("status") == RUNNING:
                raise Conflict(f"container {name} is running; stop it first (or move with --stateless)")
            if inst.get("status") != STOPPED:
                raise Conflict(f"container {name} is {str(inst.get('status')).lower()}; stop it first")
            records = [] if instance_only else snaps
            volumes = [
                self._export_volume(s["name"], self._volume_dir(name, s["name"], pool)) for s in records
            ]
            volumes.append(self._export_volume(None, self._volume_dir(name, None, pool)))
        idmap = None
        try:
            idmap = disk_idmap(config, name)
        except BadRequest as exc:
            only_reason = only_reason or exc.message
        instance = {k: inst[k] for k in INSTANCE_KEYS if k in inst}
        instance["snapshots"] = [
            {k: s[k] for k in (*INSTANCE_KEYS, "name", "created_at", "expires_at") if k in s} for s in records
        ]
        metadata = self._volume_dir(name, None, pool) / "metadata.yaml"
        with suppress(OSError):
            instance["metadata_yaml"] = metadata.read_text()[:65536]
        return ExportPlan(
            name=name,
            created_at=inst.get("created_at", ""),
            base_image=config.get("volatile.base_image", ""),
            architecture=inst.get("architecture", ""),
            config=config,
            init="/sbin/init",
            idmap=idmap.to_json() if idmap else None,
            snapshots=[SnapshotRecord(s["name"], s.get("created_at", "")) for s in records],
            volumes=volumes,
            layout=LAYOUT_LXD,
            instance=instance,
            only_methods=("lxd-migration",) if only_reason else None,
            only_reason=only_reason,
        )

    @staticmethod
    def _export_volume(snapshot: str | None, vdir: Path) -> ExportVolume:
        return ExportVolume(snapshot, vdir / ROOTFS, subvolume=vdir)

    def export_scratch(self, name: str) -> Path:
        path = self.work / "exporting" / f"{name}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        return path

    def export_scratch_remove(self, path: Path) -> None:
        if Path(path).parent == self.work / "exporting":
            self.pool.remove(Path(path))
