"""Renames and migrations of native containers: what a source exports, how a target stages, shifts and
commits what it received (all or nothing)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from hostagent.jsonfile import write_json
from hostagent.runtimes import modes
from hostagent.runtimes.base import (
    RUNNING,
    STOPPED,
    ContainerRecord,
    ExportPlan,
    ExportVolume,
    ImportStaging,
    SnapshotRecord,
)
from hostagent.runtimes.idmap import IdMap, shift_into, shift_out_of
from hostagent.runtimes.native.base import (
    CREATING,
    DEFAULT_INIT,
    EXPORTING,
    NEW_SUFFIX,
    RECORD,
    ROOTFS,
    SNAPSHOTS,
    WORK_SUFFIX,
    NativeBase,
)
from hostagent.runtimes.staging import place_received, prefill_volume, receive_dir
from orchapi.errors import Conflict, NotFound
from orchapi.names import check_container_name, check_snapshot_name


class Migration(NativeBase):
    def rename(self, name: str, new_name: str) -> ContainerRecord:
        check_container_name(new_name)
        first, second = sorted((name, new_name))
        with self._locked(first), self._locked(second), self._named_errors(name):
            data = self._load(name)
            status, _, st = self._live(name)
            if status == RUNNING:
                raise Conflict(f"container {name} is running; stop it first")
            if new_name == name:
                return self._record(data, STOPPED)
            if os.path.lexists(self.container_dir(new_name)):
                raise Conflict(f"container {new_name} already exists")
            if st is not None:
                self._forget_runc(name, data)
            # the dir is the container: rename it, then fix the name in the record (recover() fixes a
            # record whose name disagrees with its dir, should a crash fall in between)
            os.rename(self.container_dir(name), self.container_dir(new_name))
            data["name"], data["status"], data["pid"] = new_name, STOPPED, 0
            self._save(new_name, data)
            return self._record(data, STOPPED)

    def export_plan(self, name: str, snapshot: str | None, instance_only: bool) -> ExportPlan:
        with self._locked(name):
            data = self._load(name)
            cdir = self.container_dir(name)
            snaps = data.get("snapshots", [])
            if snapshot is not None:
                check_snapshot_name(snapshot)
                if not any(s["name"] == snapshot for s in snaps):
                    raise NotFound(f"snapshot {name}/{snapshot} not found")
                records: list[dict[str, str]] = []
                volumes = [ExportVolume(None, cdir / SNAPSHOTS / snapshot / ROOTFS)]
            else:
                if self._live(name)[0] == RUNNING:
                    raise Conflict(f"container {name} is running; stop it first (or move with --stateless)")
                records = [] if instance_only else list(snaps)
                volumes = [ExportVolume(s["name"], cdir / SNAPSHOTS / s["name"] / ROOTFS) for s in records]
                volumes.append(ExportVolume(None, cdir / ROOTFS))
            return ExportPlan(
                name=name,
                created_at=data["created_at"],
                base_image=data.get("base_image", ""),
                architecture=data.get("architecture", "x86_64"),
                config=dict(data.get("config", {})),
                init=data.get("init") or DEFAULT_INIT,
                idmap=data.get("idmap"),
                snapshots=[SnapshotRecord(s["name"], s["created_at"]) for s in records],
                volumes=volumes,
            )

    def export_scratch(self, name: str) -> Path:
        path = self.containers_dir / f"{EXPORTING}{name}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        return path

    def export_scratch_remove(self, path: Path) -> None:
        if Path(path).parent == self.containers_dir and path.name.startswith(EXPORTING):
            self._delete_tree(path)

    def import_check(self, name: str, refresh: bool) -> dict[str, Any] | None:
        with self._locked(name):
            if not os.path.lexists(self.container_dir(name)):
                return None
            if not refresh:
                raise Conflict(f"container {name} already exists")
            data = self._load(name)
            if self._live(name)[0] == RUNNING:
                raise Conflict(f"container {name} is running; stop it first to refresh it")
            return data

    def import_begin(self, name: str, refresh: bool) -> ImportStaging:
        existing = self.import_check(name, refresh)
        # private from the first received byte: nothing a source sends is reachable before it is checked
        tmp = modes.private_dir(self.containers_dir / f"{CREATING}{name}-{secrets.token_hex(4)}")
        modes.private_dir(tmp / SNAPSHOTS)
        return ImportStaging(name, tmp, existing, self.container_dir(name) if existing is not None else None)

    def import_prefill(
        self,
        staging: ImportStaging,
        snapshot: str | None,
        base: Path | None,
        base_idmap: dict[str, int] | None,
        image: str | None,
        idmap: dict[str, int] | None,
    ) -> Path:
        return prefill_volume(self.storage, self.images, staging, snapshot, base, base_idmap, image, idmap)

    def import_receive_dir(self, staging: ImportStaging, snapshot: str | None) -> Path:
        return receive_dir(staging, snapshot)

    def import_place(self, staging: ImportStaging, snapshot: str | None, received: Path) -> None:
        place_received(self.storage, staging, snapshot, received)

    def import_commit(
        self, staging: ImportStaging, data: dict[str, Any], source_idmap: dict[str, int] | None
    ) -> ContainerRecord:
        name = staging.name
        with self._locked(name):
            existing = staging.existing
            privileged = data.get("config", {}).get("security.privileged") == "true"
            if privileged:
                target_map = None
            elif existing is not None and existing.get("idmap"):
                target_map = IdMap.from_json(existing["idmap"])
            else:
                target_map = self.idmap
            source_map = IdMap.from_json(source_idmap) if source_idmap else None
            received = sorted(p.name for p in (staging.path / SNAPSHOTS).iterdir())
            if source_map != target_map:
                for snap in received:
                    self._shift_staged(staging.volume(snap), source_map, target_map, snapshot=True)
                if os.path.lexists(staging.volume(None)):
                    self._shift_staged(staging.volume(None), source_map, target_map, snapshot=False)
            for leftover in staging.path.glob("recv-*"):
                self.storage.delete_volume(leftover)
            record = {
                "name": name,
                "created_at": data["created_at"],
                "base_image": data.get("base_image", ""),
                "architecture": data.get("architecture", "x86_64"),
                "config": dict(data.get("config", {})),
                "snapshots": [dict(s) for s in data.get("snapshots", [])],
                "status": STOPPED,
                "pid": 0,
                "init": data.get("init") or DEFAULT_INIT,
                "idmap": target_map.to_json() if target_map else None,
            }
            final = self.container_dir(name)
            if existing is None:
                write_json(staging.path / RECORD, record)
                modes.container_dir(staging.path, target_map)
                if os.path.lexists(final):
                    raise Conflict(f"container {name} already exists")
                try:
                    os.rename(staging.path, final)
                except OSError as exc:
                    raise Conflict(f"container {name} already exists") from exc
                return self._record(record, STOPPED)
            # refresh: new snapshots in (unrecorded until the record is saved), record, rootfs swap
            if self._live(name)[0] == RUNNING:
                raise Conflict(f"container {name} was started during the refresh; nothing was changed")
            for snap in received:
                sdir = final / SNAPSHOTS / snap
                self._delete_tree(sdir)
                os.rename(staging.volume(snap).parent, sdir)
            if os.path.lexists(staging.volume(None)):
                self.storage.delete_volume(final / (ROOTFS + NEW_SUFFIX))
                os.rename(staging.volume(None), final / (ROOTFS + NEW_SUFFIX))
            keep = {s["name"] for s in record["snapshots"]}
            gone = [s["name"] for s in existing.get("snapshots", []) if s["name"] not in keep]
            self._save(name, record)
            if os.path.lexists(final / (ROOTFS + NEW_SUFFIX)):
                self._swap_in(final)
            modes.container_dir(final, target_map)
            for snap in gone:  # snapshots the source no longer has (as LXD's refresh does)
                self._delete_tree(final / SNAPSHOTS / snap)
            self._delete_tree(staging.path)
            return self._record(record, STOPPED)

    def _shift_staged(self, path: Path, old: IdMap | None, new: IdMap | None, snapshot: bool) -> None:
        """Move a received volume's owners from the source's id map to ours (read-only ones are copied)."""

        def shift(p: Path) -> None:
            if old is not None:
                shift_out_of(p, old)
            if new is not None:
                shift_into(p, new)

        if not snapshot:
            shift(path)
            return
        work = path.with_name(ROOTFS + WORK_SUFFIX)
        self.storage.delete_volume(work)
        self.storage.clone_volume(path, work)
        shift(work)
        self.storage.delete_volume(path)
        self.storage.snapshot_volume(work, path)
        self.storage.delete_volume(work)

    def import_abort(self, staging: ImportStaging) -> None:
        if staging.path.parent == self.containers_dir and staging.path.name.startswith(CREATING):
            self._delete_tree(staging.path)
