"""The LXD runtime's core: the daemon and pool it drives, container records, lifecycle and snapshots
(all LXD's own, through its REST API). Migrations live in mixins beside it (source.py, target.py,
lxd_migration.py); :class:`~hostagent.runtimes.lxd.LxdRuntime` puts them together.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostagent.execsession.base import ExecProcess, ExecSpec
from hostagent.execsession.lxd import LxdConsole, LxdExec
from hostagent.images.lxd import LxdImageStore
from hostagent.images.store import ImageStore
from hostagent.lxd import exec as lxd_exec
from hostagent.lxd import idmap as lxd_idmap
from hostagent.lxd.adoption import Adopter
from hostagent.lxd.client import LxdClient, path_of
from hostagent.lxd.pool import CONTAINERS, ROOTFS, Pool
from hostagent.runtimes import modes
from hostagent.runtimes.base import (
    LAYOUT_LXD,
    RUNNING,
    STATUS_CODES,
    STOPPED,
    ContainerRecord,
    ExecResult,
    Runtime,
    SnapshotRecord,
)
from hostagent.runtimes.config import check_known_value, string_config
from hostagent.runtimes.idmap import IdMap
from hostagent.storage.base import StorageDriver
from hostagent.storage.btrfs import BtrfsDriver
from hostagent.storage.dir import DirDriver
from orchapi.errors import Conflict, InternalError, NotFound, OrchError

log = logging.getLogger(__name__)

#: the agent's own corner of the pool (same filesystem, so staged volumes move in by rename)
WORK_DIR = ".orch-agent"
#: orch's per-container evacuation policy, as an LXD user key (see orchestrator/evacuation/runner.py)
EVACUATE_KEY = "user.orch.evacuate"
#: keys of a received LXD instance kept as they are; devices are checked against the target's pool
INSTANCE_KEYS = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful", "description")


class LxdBase(Runtime):
    """Containers of one LXD daemon, in one storage pool: state, lifecycle, snapshots."""

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
            pool = root_pool([self.client.get(path_of("profiles", "default"))])
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

    def exec_process(self, name: str, spec: ExecSpec) -> ExecProcess:
        if self._instance(name).get("status") != RUNNING:
            raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")
        return LxdExec(self.client, name, spec)

    def console_process(self, name: str, width: int, height: int) -> ExecProcess:
        if self._instance(name).get("status") != RUNNING:
            raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")
        return LxdConsole(self.client, name, width, height)

    def console_log(self, name: str) -> bytes:
        self._instance(name)
        response = self.client.raw("GET", path_of("instances", name, "console"))
        return response.content if response.status_code == 200 else b""

    def update_config(self, name: str, config: dict[str, str]) -> ContainerRecord:
        inst = self._instance(name)
        current = inst.get("config") or {}
        new = {k: v for k, v in config.items() if not k.startswith("volatile.")}
        new.update({k: v for k, v in current.items() if k.startswith("volatile.")})
        body = {k: inst[k] for k in INSTANCE_KEYS if k in inst}
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
        body = {k: inst[k] for k in INSTANCE_KEYS if k in inst}
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


def disk_idmap(config: dict[str, str], name: str) -> IdMap | None:
    """The id map a container's files on disk are shifted into (None: raw ids, e.g. privileged)."""
    if config.get("security.privileged", "").lower() in ("true", "1"):
        return None
    return lxd_idmap.parse(config.get("volatile.last_state.idmap"), name)


def root_pool(profiles: list[dict[str, Any]]) -> str | None:
    """The pool the root disk of an instance with these profiles lands on (the last profile with a root
    disk wins, as in LXD's expansion)."""
    pool = None
    for profile in profiles:
        for device in (profile.get("devices") or {}).values():
            if device.get("type") == "disk" and device.get("path") == "/" and device.get("pool"):
                pool = str(device["pool"])
    return pool


def lxd_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
