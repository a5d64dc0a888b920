"""The LXD runtime driver: the agent fronts a real LXD daemon through its REST API on the unix socket.

Containers, snapshots, config, start/stop and exec are LXD's own (``orch list`` and ``lxc list`` show
the same thing). Migrations use orch's transfer engine on LXD's storage directly:

- as a source, the volumes sent are the instance's ``rootfs`` directories in the pool (rsync, tar) or,
  between btrfs pools, the instance's subvolumes (``btrfs send -p`` from snapshot to snapshot);
- as a target, the volumes are filled in a staging dir inside the pool (pre-filled from the base image
  or the previous snapshot, then the delta), laid out exactly as LXD lays out a container
  (``containers/<name>/rootfs`` + ``metadata.yaml`` + ``backup.yaml``, ``containers-snapshots/<name>/
  <snap>/``), moved into the pool in one rename per directory and adopted by LXD's recovery API, which
  creates the instance and its snapshots (with their creation dates) from ``backup.yaml``.

Owners are kept numeric as on disk; the map they are in travels with them and is recorded as
``volatile.last_state.idmap``, so LXD re-shifts on the next start if its own map differs.

Only the ``default`` project and ``dir``/``btrfs`` pools are supported by the orch transfer; other pools
can still move with the ``lxd-migration`` method.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostagent.images.lxd import LxdImageStore
from hostagent.images.store import ImageStore
from hostagent.lxd import exec as lxd_exec
from hostagent.lxd import idmap as lxd_idmap
from hostagent.lxd import recover
from hostagent.lxd.adoption import Adopter, LxdStaging
from hostagent.lxd.client import LxdClient, path_of
from hostagent.lxd.pool import CONTAINERS, ROOTFS, SNAPSHOTS, Pool
from hostagent.runtimes import modes
from hostagent.runtimes.base import (
    LAYOUT_LXD,
    RUNNING,
    STATUS_CODES,
    STOPPED,
    ContainerRecord,
    ExecResult,
    ExportPlan,
    ExportVolume,
    ImportStaging,
    Runtime,
    SnapshotRecord,
    check_known_value,
    string_config,
)
from hostagent.runtimes.idmap import IdMap
from hostagent.runtimes.staging import prefill_volume
from hostagent.storage.base import StorageDriver
from hostagent.storage.btrfs import BtrfsDriver
from hostagent.storage.dir import DirDriver
from orchapi.errors import BadRequest, Conflict, InternalError, NotFound, OrchError

log = logging.getLogger(__name__)

#: the agent's own corner of the pool (same filesystem, so staged volumes move in by rename)
WORK_DIR = ".orch-agent"
#: orch's per-container evacuation policy, as an LXD user key (see orchestrator/evacuation/runner.py)
EVACUATE_KEY = "user.orch.evacuate"
#: keys of a received LXD instance kept as they are; devices are checked against the target's pool
_INSTANCE_KEYS = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful", "description")


class LxdRuntime(Runtime):
    """Containers of one LXD daemon, in one storage pool."""

    name = "lxd"
    layout = LAYOUT_LXD

    def __init__(
        self, data_dir: Path, socket_path: str, lxd_dir: Path | None = None, pool: str | None = None
    ):
        self.data_dir = Path(data_dir)
        self.client = LxdClient(socket_path)
        self.lxd_dir = Path(lxd_dir) if lxd_dir else Path(socket_path).parent
        server = self.client.server()
        if server.get("auth") != "trusted":
            raise InternalError(f"LXD at {socket_path} does not trust this agent")
        if pool is None:
            pool = _root_pool([self.client.get(path_of("profiles", "default"))])
            if pool is None:
                raise InternalError("LXD's default profile has no root disk", "give the pool with --lxd-pool")
        self.pool = Pool(self.lxd_dir, self.client.get(path_of("storage-pools", pool)))
        if self.pool.driver not in ("dir", "btrfs"):
            raise InternalError(
                f"LXD pool {pool} uses {self.pool.driver}; orch's LXD driver supports dir and btrfs pools",
                "give another pool with --lxd-pool",
            )
        if not (self.pool.dir / CONTAINERS).is_dir():
            raise InternalError(f"LXD pool {pool} is not at {self.pool.dir}", "give --lxd-dir")
        self.storage: StorageDriver = (
            BtrfsDriver(self.pool.dir) if self.pool.driver == "btrfs" else DirDriver(self.pool.dir)
        )
        #: rootfs trees are plain directories inside LXD's volumes, on either pool type
        self.trees = DirDriver(self.pool.dir)
        # the agent's corner is root's alone: staged volumes, scratch snapshots and the unpacked image
        # cache hold setuid files no local user may reach (see hostagent/runtimes/modes.py)
        self.work = modes.private_dir(self.pool.dir / WORK_DIR)
        for sub in ("staging", "exporting"):
            modes.private_dir(self.work / sub)
        self.images = LxdImageStore(self.client, ImageStore(self.work / "images", self.storage))
        self.adopter = Adopter(self.client, self.pool)

    # ----------------------------------------------------------------- properties

    @property
    def storage_name(self) -> str:
        return self.pool.driver

    @property
    def transfer_methods(self) -> tuple[str, ...]:
        return (*self.storage.transfer_methods, "lxd-migration")

    def validate_config(self, config: dict[str, Any]) -> dict[str, str]:
        """LXD validates its own keys when they are applied; orch's ``evacuate`` policy (which LXD does not
        know, and whose ``skip`` LXD's ``cluster.evacuate`` lacks) is kept as ``user.orch.evacuate``."""
        out: dict[str, str] = {}
        for key, value in string_config(config).items():
            if key == "evacuate":
                check_known_value(key, value)
                key = EVACUATE_KEY
            out[key] = value
        return out

    # ----------------------------------------------------------------- records

    def _instance(self, name: str, recursion: int = 1) -> dict[str, Any]:
        try:
            inst = self.client.get(path_of("instances", name) + f"?recursion={recursion}")
        except NotFound:
            raise NotFound(f"container {name} not found") from None
        if inst.get("type") != "container":
            raise NotFound(f"container {name} not found", f"{name} is a virtual machine")
        return inst

    def _snapshots(self, name: str) -> list[dict[str, Any]]:
        snaps = self.client.get(path_of("instances", name, "snapshots") + "?recursion=1") or []
        for s in snaps:
            s["name"] = s["name"].rsplit("/", 1)[-1]
        return sorted(snaps, key=lambda s: s.get("created_at", ""))

    @staticmethod
    def _record(inst: dict[str, Any], snaps: list[dict[str, Any]] | None = None) -> ContainerRecord:
        config = dict(inst.get("config") or {})
        base_image = config.pop("volatile.base_image", "")
        if EVACUATE_KEY in config:  # shown (and set, see validate_config) under orch's name
            config["evacuate"] = config.pop(EVACUATE_KEY)
        if snaps is None:
            snaps = [
                {"name": s["name"].rsplit("/", 1)[-1], "created_at": s.get("created_at", "")}
                for s in inst.get("snapshots") or []
            ]
        state = inst.get("state") or {}
        status = inst.get("status") or STOPPED
        return ContainerRecord(
            name=inst["name"],
            status=status,
            created_at=inst.get("created_at", ""),
            base_image=base_image,
            architecture=inst.get("architecture", ""),
            config=config,
            snapshots=[SnapshotRecord(s["name"], s.get("created_at", "")) for s in snaps],
            pid=int(state.get("pid") or 0),
            extra={k: inst[k] for k in ("profiles", "devices", "description", "ephemeral") if k in inst},
        )

    def list(self) -> list[ContainerRecord]:
        instances = self.client.get("/1.0/instances?recursion=2") or []
        records = [self._record(i) for i in instances if i.get("type") == "container"]
        return sorted(records, key=lambda r: r.name)

    def get(self, name: str) -> ContainerRecord:
        return self._record(self._instance(name, 2))

    def state(self, name: str) -> dict[str, Any]:
        pool = self._pool_of(self._instance(name))
        st = dict(self.client.get(path_of("instances", name, "state")) or {})
        st.setdefault("status_code", STATUS_CODES.get(st.get("status", ""), 0))
        disk = st.get("disk") or {}
        if not (disk.get("root") or {}).get("usage"):  # dir pools without quotas report none
            with suppress(OSError):
                rootfs = self._volume_dir(name, None, pool) / ROOTFS
                disk["root"] = {"usage": self.storage.used_bytes(rootfs)}
            st["disk"] = disk
        return st

    def _pool_of(self, inst: dict[str, Any]) -> str:
        """The pool holding an instance's root disk."""
        root = (inst.get("expanded_devices") or {}).get("root") or {}
        return str(root.get("pool") or self.pool.name)

    # ----------------------------------------------------------------- lifecycle

    def create(self, name: str, image_fingerprint: str, config: dict[str, str]) -> ContainerRecord:
        fingerprint = self.images.get(image_fingerprint).fingerprint
        body = {
            "name": name,
            "type": "container",
            "source": {"type": "image", "fingerprint": fingerprint},
            "config": config,
            "devices": self._devices({}, ["default"]),
        }
        try:
            self.client.call("POST", "/1.0/instances", body, timeout=600)
        except Conflict as exc:
            raise Conflict(f"container {name} already exists") if "exists" in str(exc) else exc from None
        return self.get(name)

    def delete(self, name: str) -> None:
        if self._instance(name).get("status") == RUNNING:
            raise Conflict(f"container {name} is running; stop it first or use --force")
        self.client.call("DELETE", path_of("instances", name), timeout=600)

    def start(self, name: str) -> None:
        if self._instance(name).get("status") == RUNNING:
            raise Conflict(f"container {name} is already running")
        self.client.call("PUT", path_of("instances", name, "state"), {"action": "start"}, timeout=120)

    def stop(self, name: str, force: bool = False, timeout: float = 30.0) -> None:
        if self._instance(name).get("status") != RUNNING:
            raise Conflict(f"container {name} is not running")
        url = path_of("instances", name, "state")
        if not force:
            try:
                self.client.call(
                    "PUT", url, {"action": "stop", "timeout": int(timeout)}, timeout=timeout + 60
                )
                return
            except OrchError as exc:
                log.info("clean stop of %s failed (%s); killing it", name, exc)
        self.client.call("PUT", url, {"action": "stop", "force": True}, timeout=120)

    def exec(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        cwd: str,
        stdin: bytes | None,
        timeout: float | None,
    ) -> ExecResult:
        return lxd_exec.run(self.client, name, command, env, cwd, stdin, timeout)

    def update_config(self, name: str, config: dict[str, str]) -> ContainerRecord:
        inst = self._instance(name)
        current = inst.get("config") or {}
        new = {k: v for k, v in config.items() if not k.startswith("volatile.")}
        new.update({k: v for k, v in current.items() if k.startswith("volatile.")})
        body = {k: inst[k] for k in _INSTANCE_KEYS if k in inst}
        body["config"] = new
        self.client.call("PUT", path_of("instances", name), body)
        return self.get(name)

    def snapshot_create(self, name: str, snapshot: str) -> SnapshotRecord:
        self._instance(name)
        if any(s["name"] == snapshot for s in self._snapshots(name)):
            raise Conflict(f"snapshot {name}/{snapshot} already exists")
        self.client.call("POST", path_of("instances", name, "snapshots"), {"name": snapshot}, timeout=600)
        snap = self.client.get(path_of("instances", name, "snapshots", snapshot))
        return SnapshotRecord(snapshot, snap.get("created_at", ""))

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        self._instance(name)
        try:
            self.client.call("DELETE", path_of("instances", name, "snapshots", snapshot), timeout=600)
        except NotFound:
            raise NotFound(f"snapshot {name}/{snapshot} not found") from None

    def snapshot_restore(self, name: str, snapshot: str) -> None:
        inst = self._instance(name)
        if not any(s["name"] == snapshot for s in self._snapshots(name)):
            raise NotFound(f"snapshot {name}/{snapshot} not found")
        body = {k: inst[k] for k in _INSTANCE_KEYS if k in inst}
        body["restore"] = snapshot
        self.client.call("PUT", path_of("instances", name), body, timeout=600)

    def rename(self, name: str, new_name: str) -> ContainerRecord:
        if self._instance(name).get("status") == RUNNING:
            raise Conflict(f"container {name} is running; stop it first")
        self.client.call("POST", path_of("instances", name), {"name": new_name}, timeout=600)
        return self.get(new_name)

    def recover(self) -> None:
        """Clean up after a crash: staging and export dirs are removed (LXD never saw them), once an
        adoption the crash interrupted is undone (see hostagent/lxd/adoption.py)."""
        for entry in (self.work / "staging").iterdir():
            self.adopter.undo(entry)
            self.pool.remove(entry)
        for entry in (self.work / "exporting").iterdir():
            self.pool.remove(entry)

    # ----------------------------------------------------------------- migration: source

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
            idmap = _disk_idmap(config, name)
        except BadRequest as exc:
            only_reason = only_reason or exc.message
        instance = {k: inst[k] for k in _INSTANCE_KEYS if k in inst}
        instance["snapshots"] = [
            {k: s[k] for k in (*_INSTANCE_KEYS, "name", "created_at", "expires_at") if k in s}
            for s in records
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

    # ----------------------------------------------------------------- migration: target

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
        idmap = _disk_idmap(config, name)
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
        profile_pool = _root_pool(profiles)
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
            "created_at": data.get("created_at") or _now(),
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
        return self._root_here(devices, _root_pool(docs))

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

    # ----------------------------------------------------------------- migration: LXD's own

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
        self.client.wait(doc, 24 * 3600, on_progress=_fs_progress(progress) if progress else None)
        return self.get(name)


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKMGTPE]?)(i?)B\b")
_UNITS = {"": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def _fs_progress(report: Callable[[int], None]) -> Callable[[dict[str, Any]], None]:
    """LXD's migration progress (``fs_progress: "c1: 35.65MB (12.1MB/s)"``) as a byte count."""

    def on_metadata(metadata: dict[str, Any]) -> None:
        text = str(metadata.get("fs_progress") or "")
        found = _SIZE.search(text.split(":", 1)[-1])
        if found:
            number, unit, binary = found.groups()
            report(int(float(number) * (1024 if binary else 1000) ** _UNITS[unit]))

    return on_metadata


def _disk_idmap(config: dict[str, str], name: str) -> IdMap | None:
    """The id map a container's files on disk are shifted into (None: raw ids, e.g. privileged)."""
    if config.get("security.privileged", "").lower() in ("true", "1"):
        return None
    return lxd_idmap.parse(config.get("volatile.last_state.idmap"), name)


def _root_pool(profiles: list[dict[str, Any]]) -> str | None:
    """The pool the root disk of an instance with these profiles lands on (the last profile with a root
    disk wins, as in LXD's expansion)."""
    pool = None
    for profile in profiles:
        for device in (profile.get("devices") or {}).values():
            if device.get("type") == "disk" and device.get("path") == "/" and device.get("pool"):
                pool = str(device["pool"])
    return pool


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
