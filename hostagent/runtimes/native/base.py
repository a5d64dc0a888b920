"""The native runtime's core: its layout on disk, the container record, runc's view of liveness, and the
queries (list, get, state). The operations live in mixins beside it (lifecycle.py, snapshots.py,
migration.py); :class:`~hostagent.runtimes.native.NativeRuntime` puts them together.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hostagent.images.store import ImageStore
from hostagent.jsonfile import write_json
from hostagent.runtimes import modes
from hostagent.runtimes.base import (
    RUNNING,
    STATUS_CODES,
    STOPPED,
    ContainerRecord,
    Runtime,
    SnapshotRecord,
)
from hostagent.runtimes.idmap import IdMap, default_idmap
from hostagent.runtimes.native.host import (
    count_processes,
    memory_usage,
    runc_prefix,
)
from hostagent.runtimes.runc import Runc, reap_children
from hostagent.storage.base import StorageDriver
from orchapi.errors import BadRequest, InternalError, NotFound, OrchError
from orchapi.names import check_container_name

log = logging.getLogger(__name__)


RECORD = "container.json"
SPEC = "config.json"
ROOTFS = "rootfs"
CONSOLE = "console.log"
#: runc's own messages while starting a container (its console output goes to CONSOLE)
RUNC_LOG = "runc.log"
PIDFILE = "init.pid"
SNAPSHOTS = "snapshots"
CREATING = ".creating-"
#: an interrupted import kept for a later attempt (hostagent/runtimes/resume.py), one per container name
SUSPENDED = ".suspended-"
DELETING = ".deleting-"
#: temporary read-only snapshots of a container being sent (btrfs send needs them)
EXPORTING = ".exporting-"
#: suffixes of volumes being swapped in for ``rootfs`` (restore, privilege change); see recover()
NEW_SUFFIX = ".new"
OLD_SUFFIX = ".old"
WORK_SUFFIX = ".work"

DEFAULT_INIT = "/sbin/init"
#: runc statuses in which the container's processes exist
LIVE_STATUSES = ("running", "paused")
#: how long a killed container may take to disappear before stop gives up
KILL_WAIT = 10.0
#: how long start watches a fresh init before calling the start a success
START_SETTLE = 0.2


class NativeBase(Runtime):
    """Containers as runc bundles on the agent's data dir: state and queries."""

    name = "native"

    def __init__(
        self,
        data_dir: Path,
        storage: StorageDriver,
        images: ImageStore,
        idmap: IdMap | None = None,
        runc_binary: str = "runc",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.storage = storage
        self.images = images
        self.idmap = idmap or default_idmap()
        self.containers_dir = self.data_dir / "containers"
        # unprivileged containers' root (a high host uid) must traverse down to its rootfs (see modes.py)
        modes.traverse_dir(self.data_dir)
        modes.traverse_dir(self.containers_dir)
        self.runc = Runc(self.data_dir / "runc", runc_binary)
        self.prefix = runc_prefix(self.data_dir)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # ----------------------------------------------------------------- helpers

    @property
    def storage_name(self) -> str:
        return self.storage.name

    @property
    def transfer_methods(self) -> tuple[str, ...]:
        return tuple(self.storage.transfer_methods)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(name, threading.RLock())
        with lock:
            yield

    @contextmanager
    def _named_errors(self, name: str) -> Iterator[None]:
        """Users know the container by name, not by its runc id: rewrite errors coming from runc."""
        cid = self.runc_id(name)
        try:
            yield
        except OrchError as exc:
            if cid not in str(exc):
                raise
            hint = exc.hint.replace(cid, name) if exc.hint else None
            raise type(exc)(exc.message.replace(cid, name), hint) from exc

    def runc_id(self, name: str) -> str:
        return self.prefix + name

    def container_dir(self, name: str) -> Path:
        check_container_name(name)
        return self.containers_dir / name

    def _load(self, name: str) -> dict[str, Any]:
        path = self.container_dir(name) / RECORD
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"container {name} not found") from None
        except ValueError as exc:
            raise InternalError(f"container {name}: unreadable {RECORD} ({exc})") from exc

    def _save(self, name: str, data: dict[str, Any]) -> None:
        write_json(self.container_dir(name) / RECORD, data)

    @staticmethod
    def _record(data: dict[str, Any], status: str, pid: int = 0) -> ContainerRecord:
        return ContainerRecord(
            name=data["name"],
            status=status,
            created_at=data["created_at"],
            base_image=data["base_image"],
            architecture=data.get("architecture", "x86_64"),
            config=dict(data.get("config", {})),
            snapshots=[SnapshotRecord(s["name"], s["created_at"]) for s in data.get("snapshots", [])],
            pid=pid,
        )

    @staticmethod
    def _idmap_of(data: dict[str, Any]) -> IdMap | None:
        """The map the rootfs is shifted to (None: privileged, raw ids)."""
        raw = data.get("idmap")
        return IdMap.from_json(raw) if raw else None

    def _live(self, name: str) -> tuple[str, int, dict[str, Any] | None]:
        """(status, pid, runc state) from runc itself, the only source of truth for liveness."""
        st = self.runc.state(self.runc_id(name))
        if st is not None and st.get("status") in LIVE_STATUSES:
            return RUNNING, int(st.get("pid") or 0), st
        return STOPPED, 0, st

    def _set_status(self, name: str, status: str, pid: int = 0) -> None:
        """Persist the last known status and init pid (the pid is what a later reap needs)."""
        data = self._load(name)
        if (data.get("status"), data.get("pid", 0)) != (status, pid):
            data["status"], data["pid"] = status, pid
            self._save(name, data)

    def _forget_runc(self, name: str, data: dict[str, Any]) -> None:
        """Drop runc's state of a container whose init is gone, and reap that init if it is our child.

        Reaping only matters when the agent is a subreaper or PID 1 (see runc.py); elsewhere the
        recorded pid is not our child and this is a no-op.
        """
        self.runc.delete(self.runc_id(name), force=True)
        if data.get("pid"):
            reap_children([int(data["pid"])])

    def _delete_tree(self, path: Path) -> None:
        """Remove a container dir (or a half-made one) with all volumes inside it."""
        if not path.exists():
            return
        snaps = path / SNAPSHOTS
        if snaps.is_dir():
            for snap in snaps.iterdir():
                for vol in (ROOTFS, ROOTFS + NEW_SUFFIX, ROOTFS + OLD_SUFFIX, ROOTFS + WORK_SUFFIX):
                    self.storage.delete_volume(snap / vol)
        for vol in (ROOTFS, ROOTFS + NEW_SUFFIX, ROOTFS + OLD_SUFFIX, ROOTFS + WORK_SUFFIX):
            self.storage.delete_volume(path / vol)
        self.storage.delete_volume(path)

    def _swap_in(self, directory: Path) -> None:
        """Make ``rootfs.new`` the ``rootfs`` of ``directory``, keeping a valid rootfs at every instant
        a crash could observe (recover() finishes or undoes a half-done swap)."""
        current = directory / ROOTFS
        new, old = directory / (ROOTFS + NEW_SUFFIX), directory / (ROOTFS + OLD_SUFFIX)
        self.storage.delete_volume(old)
        os.rename(current, old)
        os.rename(new, current)
        self.storage.delete_volume(old)

    def _settle_swap(self, directory: Path) -> None:
        """recover() half of :meth:`_swap_in`: roll back if rootfs is missing, else drop leftovers."""
        current, old = directory / ROOTFS, directory / (ROOTFS + OLD_SUFFIX)
        if not os.path.lexists(current) and os.path.lexists(old):
            log.warning("restoring %s from an interrupted swap", current)
            os.rename(old, current)
        for suffix in (NEW_SUFFIX, OLD_SUFFIX, WORK_SUFFIX):
            self.storage.delete_volume(directory / (ROOTFS + suffix))

    # ----------------------------------------------------------------- queries

    def list(self) -> list[ContainerRecord]:
        live = {}
        for st in self.runc.list():
            if st.get("status") in LIVE_STATUSES:
                live[st["id"]] = int(st.get("pid") or 0)
        out = []
        for entry in sorted(os.listdir(self.containers_dir)):
            if entry.startswith("."):
                continue
            try:
                data = self._load(entry)
            except (NotFound, BadRequest):
                continue
            except InternalError as exc:
                log.warning("skipping container %s: %s", entry, exc)
                continue
            cid = self.runc_id(entry)
            out.append(self._record(data, RUNNING if cid in live else STOPPED, live.get(cid, 0)))
        return out

    def get(self, name: str) -> ContainerRecord:
        data = self._load(name)
        status, pid, _ = self._live(name)
        return self._record(data, status, pid)

    def state(self, name: str) -> dict[str, Any]:
        self._load(name)
        status, pid, _ = self._live(name)
        rootfs = self.container_dir(name) / ROOTFS
        try:
            usage = self.storage.used_bytes(rootfs)
        except OSError:
            usage = 0
        out: dict[str, Any] = {
            "status": status,
            "status_code": STATUS_CODES[status],
            "pid": pid,
            "processes": count_processes(pid) if pid else 0,
            "disk": {"root": {"usage": usage}},
        }
        memory = memory_usage(pid) if pid else None
        if memory is not None:
            out["memory"] = {"usage": memory}
        return out
