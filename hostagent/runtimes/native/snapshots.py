"""Snapshots of native containers, and the recovery that settles what a crash interrupted."""

from __future__ import annotations

import logging
import os

from hostagent.runtimes import modes
from hostagent.runtimes.base import (
    RUNNING,
    SnapshotRecord,
)
from hostagent.runtimes.native.base import (
    CREATING,
    DELETING,
    EXPORTING,
    NEW_SUFFIX,
    RECORD,
    ROOTFS,
    SNAPSHOTS,
    NativeBase,
)
from hostagent.runtimes.native.host import (
    utc_now,
)
from orchapi.errors import Conflict, NotFound, OrchError
from orchapi.names import check_snapshot_name

log = logging.getLogger(__name__)


class SnapshotsAndRecovery(NativeBase):
    def snapshot_create(self, name: str, snapshot: str) -> SnapshotRecord:
        check_snapshot_name(snapshot)
        with self._locked(name):
            data = self._load(name)
            if any(s["name"] == snapshot for s in data.get("snapshots", [])):
                raise Conflict(f"snapshot {name}/{snapshot} already exists")
            sdir = self.container_dir(name) / SNAPSHOTS / snapshot
            self._delete_tree(sdir)  # a leftover of a crashed attempt, never recorded
            modes.private_dir(sdir.parent)
            sdir.mkdir(mode=modes.PRIVATE)
            try:
                self.storage.snapshot_volume(self.container_dir(name) / ROOTFS, sdir / ROOTFS)
            except BaseException:
                self._delete_tree(sdir)
                raise
            record = SnapshotRecord(snapshot, utc_now())
            data.setdefault("snapshots", []).append({"name": record.name, "created_at": record.created_at})
            self._save(name, data)
            return record

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        check_snapshot_name(snapshot)
        with self._locked(name):
            data = self._load(name)
            snaps = data.get("snapshots", [])
            if not any(s["name"] == snapshot for s in snaps):
                raise NotFound(f"snapshot {name}/{snapshot} not found")
            # forget it first: a crash then leaves an unrecorded dir, which recover() removes
            data["snapshots"] = [s for s in snaps if s["name"] != snapshot]
            self._save(name, data)
            self._delete_tree(self.container_dir(name) / SNAPSHOTS / snapshot)

    def snapshot_restore(self, name: str, snapshot: str) -> None:
        check_snapshot_name(snapshot)
        with self._locked(name):
            data = self._load(name)
            if not any(s["name"] == snapshot for s in data.get("snapshots", [])):
                raise NotFound(f"snapshot {name}/{snapshot} not found")
            if self._live(name)[0] == RUNNING:
                raise Conflict(f"container {name} is running; stop it first to restore a snapshot")
            cdir = self.container_dir(name)
            new = cdir / (ROOTFS + NEW_SUFFIX)
            self.storage.delete_volume(new)
            try:
                self.storage.clone_volume(cdir / SNAPSHOTS / snapshot / ROOTFS, new)
            except BaseException:
                self.storage.delete_volume(new)
                raise
            self._swap_in(cdir)

    # ----------------------------------------------------------------- recovery

    def recover(self) -> None:
        modes.traverse_dir(self.data_dir)
        modes.traverse_dir(self.containers_dir)
        known: set[str] = set()
        for entry in sorted(os.listdir(self.containers_dir)):
            path = self.containers_dir / entry
            if entry.startswith(CREATING) and self._recover_staging(entry):  # type: ignore[attr-defined]
                continue  # an interrupted import with its resume journal: suspended, for a later attempt
            if entry.startswith((CREATING, DELETING, EXPORTING)):
                log.info("removing leftover %s", path)
                self._delete_tree(path)
                continue
            if entry.startswith(".") or not (path / RECORD).is_file():
                continue
            known.add(self.runc_id(entry))
            with self._locked(entry):
                try:
                    self._recover_one(entry)
                except OrchError as exc:
                    log.error("could not recover container %s: %s", entry, exc)
        for st in self.runc.list():
            cid = st.get("id", "")
            if cid.startswith(self.prefix) and cid not in known:
                log.warning("removing runc container %s that has no container dir", cid)
                self.runc.delete(cid, force=True)

    def _recover_one(self, name: str) -> None:
        data = self._load(name)
        cdir = self.container_dir(name)
        self._settle_swap(cdir)
        recorded = {s["name"] for s in data.get("snapshots", [])}
        modes.container_dir(cdir, self._idmap_of(data))  # also tightens a data dir made by older agents
        snaps = modes.private_dir(cdir / SNAPSHOTS)
        for sdir in snaps.iterdir():
            if sdir.name not in recorded:
                log.info("removing unrecorded snapshot dir %s", sdir)
                self._delete_tree(sdir)
            else:
                self._settle_swap(sdir)
                modes.private_dir(sdir)
        data["snapshots"] = [s for s in data.get("snapshots", []) if (snaps / s["name"] / ROOTFS).exists()]
        status, pid, st = self._live(name)
        if status != RUNNING and st is not None:
            self._forget_runc(name, data)
        data["status"], data["pid"] = status, pid
        data["name"] = name  # a rename interrupted between moving the dir and saving the record
        self._save(name, data)
