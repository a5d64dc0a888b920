"""The native runtime: one OCI bundle per container, run by runc, volumes from the storage driver.

Layout under ``<data-dir>``::

    containers/<name>/container.json          what the agent knows (ContainerRecord fields + init, idmap)
    containers/<name>/config.json             OCI spec, regenerated at every start
    containers/<name>/rootfs/                 the container's volume
    containers/<name>/snapshots/<s>/rootfs/   read-only snapshot volumes
    containers/<name>/console.log             init's stdout/stderr since the last start
    runc/                                     runc's state dir (``--root``), private to this agent

Every multi-step change is arranged so that a crash leaves either the old or the new state plus
dot-named or suffixed leftovers that :meth:`NativeRuntime.recover` removes: containers are built in
``containers/.creating-*`` and renamed into place, deleted by renaming to ``containers/.deleting-*`` first,
and rootfs replacements are prepared beside the old volume and swapped by rename. Containers received by
a migration are staged in ``containers/.creating-*`` too (a refresh moves its new volumes into the
existing container only after every volume was verified); a source keeps its temporary read-only
snapshots in ``containers/.exporting-*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
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
    ExecResult,
    ExportPlan,
    ExportVolume,
    ImportStaging,
    Runtime,
    SnapshotRecord,
)
from hostagent.runtimes.idmap import IdMap, default_idmap, shift_into, shift_out_of
from hostagent.runtimes.oci import make_spec
from hostagent.runtimes.runc import Runc, reap_children, tail_lines
from hostagent.runtimes.staging import place_received, prefill_volume, receive_dir
from hostagent.storage.base import StorageDriver
from orchapi.errors import BadRequest, Conflict, InternalError, NotFound, OrchError
from orchapi.names import check_container_name, check_snapshot_name

log = logging.getLogger(__name__)

RECORD = "container.json"
SPEC = "config.json"
ROOTFS = "rootfs"
CONSOLE = "console.log"
PIDFILE = "init.pid"
SNAPSHOTS = "snapshots"
CREATING = ".creating-"
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


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def runc_prefix(data_dir: Path) -> str:
    """``orch-<8 hex>-``, unique per data dir: agents sharing a machine (and its cgroups) never collide."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    return f"orch-{digest}-"


def resolve_in_root(root: Path, path: str, max_links: int = 40) -> Path | None:
    """Resolve ``path`` inside ``root`` as the container would see it, without ever leaving ``root``.

    Symlinks are read lexically: absolute targets restart at ``root`` and ``..`` stops at it, so a
    hostile image cannot make the agent look at host files. None if the link chain is too long.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if os.path.islink(candidate):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def halt_signal(rootfs: Path, init: str) -> int:
    """The signal that asks this container's init for a clean shutdown.

    busybox init halts on SIGPWR and systemd on SIGRTMIN+3 (LXC's choices for them); anything else
    gets SIGTERM. A PID 1 ignores signals it has no handler for, hence the kill after the timeout.
    """
    target = resolve_in_root(rootfs, init)
    name = target.name if target is not None else ""
    if name == "busybox":
        return signal.SIGPWR
    if name == "systemd":
        return signal.SIGRTMIN + 3
    return signal.SIGTERM


def count_processes(pid: int) -> int:
    """Processes in the pid namespace whose init is ``pid`` (exec'd commands join it too)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return 0
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    count += 1
            except OSError:
                continue
    return count


def memory_usage(pid: int) -> int | None:
    """Memory charged to the container's cgroup (v1 memory controller or v2), None if unknown."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory", path.lstrip("/"), "memory.usage_in_bytes")
        elif controllers == "":
            candidate = Path("/sys/fs/cgroup", path.lstrip("/"), "memory.current")
        else:
            continue
        try:
            return int(candidate.read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _read_pid(path: Path) -> int:
    """The pid runc wrote, 0 if there is none."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


class NativeRuntime(Runtime):
    """Containers as runc bundles on the agent's data dir."""

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

    # ----------------------------------------------------------------- lifecycle

    def create(self, name: str, image_fingerprint: str, config: dict[str, str]) -> ContainerRecord:
        final = self.container_dir(name)
        with self._locked(name):
            if os.path.lexists(final):
                raise Conflict(f"container {name} already exists")
            image = self.images.get(image_fingerprint)
            privileged = config.get("security.privileged") == "true"
            idmap = None if privileged else self.idmap
            tmp = modes.private_dir(self.containers_dir / f"{CREATING}{name}-{secrets.token_hex(4)}")
            try:
                self.storage.clone_volume(self.images.rootfs(image.fingerprint), tmp / ROOTFS)
                if idmap is not None:
                    shift_into(tmp / ROOTFS, idmap)
                modes.private_dir(tmp / SNAPSHOTS)
                data = {
                    "name": name,
                    "created_at": utc_now(),
                    "base_image": image.fingerprint,
                    "architecture": image.architecture,
                    "config": dict(config),
                    "snapshots": [],
                    "status": STOPPED,
                    "init": image.init or DEFAULT_INIT,
                    "idmap": idmap.to_json() if idmap else None,
                }
                write_json(tmp / RECORD, data)
                modes.container_dir(tmp, idmap)
                try:
                    os.rename(tmp, final)
                except OSError as exc:  # someone made the name meanwhile (another agent process?)
                    raise Conflict(f"container {name} already exists") from exc
            except BaseException:
                self._delete_tree(tmp)
                raise
            return self._record(data, STOPPED)

    def delete(self, name: str) -> None:
        with self._locked(name), self._named_errors(name):
            data = self._load(name)
            status, _, st = self._live(name)
            if status == RUNNING:
                raise Conflict(f"container {name} is running; stop it first or use --force")
            if st is not None:
                self._forget_runc(name, data)
            # rename first: the name is gone at once, and recover() finishes an interrupted delete
            doomed = self.containers_dir / f"{DELETING}{name}-{secrets.token_hex(4)}"
            os.rename(self.container_dir(name), doomed)
            self._delete_tree(doomed)

    def start(self, name: str) -> None:
        with self._locked(name), self._named_errors(name):
            data = self._load(name)
            cid = self.runc_id(name)
            status, _, st = self._live(name)
            if status == RUNNING:
                raise Conflict(f"container {name} is already running")
            if st is not None:  # init exited on its own: runc still holds its state
                self._forget_runc(name, data)
            bundle = self.container_dir(name)
            spec = make_spec(bundle / ROOTFS, name, [data.get("init") or DEFAULT_INIT], self._idmap_of(data))
            write_json(bundle / SPEC, spec)
            console = bundle / CONSOLE
            (bundle / PIDFILE).unlink(missing_ok=True)  # a stale pid must never be reaped by mistake
            with open(console, "wb"):
                pass  # one boot per log: it must not grow across restarts
            try:
                pid = self.runc.run_detached(cid, bundle, console, bundle / PIDFILE)
                deadline = time.monotonic() + START_SETTLE
                while True:
                    status, _, _ = self._live(name)
                    if status != RUNNING or time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
                if status != RUNNING:
                    raise InternalError("its init exited at once")
            except OrchError as exc:
                self.runc.delete(cid, force=True)
                self._set_status(name, STOPPED)
                reap_children([_read_pid(bundle / PIDFILE)])
                tail = tail_lines(console, 3)
                reason = exc.message.removeprefix(f"starting {cid}: ")
                raise InternalError(
                    f"container {name} failed to start: {reason}", f"console: {tail}" if tail else None
                ) from exc
            self._set_status(name, RUNNING, pid)

    def stop(self, name: str, force: bool = False, timeout: float = 30.0) -> None:
        with self._locked(name), self._named_errors(name):
            data = self._load(name)
            cid = self.runc_id(name)
            status, pid, st = self._live(name)
            if status != RUNNING:
                if st is not None:
                    self._forget_runc(name, data)
                self._set_status(name, STOPPED)
                raise Conflict(f"container {name} is not running")
            stopped = False
            if not force:
                stop_timeout = data.get("config", {}).get("boot.stop_timeout")
                wait = float(stop_timeout) if stop_timeout else timeout
                rootfs = self.container_dir(name) / ROOTFS
                self._signal(cid, halt_signal(rootfs, data.get("init") or DEFAULT_INIT))
                stopped = self._wait_stopped(cid, wait)
            if not stopped:
                self._signal(cid, signal.SIGKILL)
                if not self._wait_stopped(cid, KILL_WAIT):
                    raise InternalError(f"container {name} did not stop after SIGKILL")
            self.runc.delete(cid, force=True)
            reap_children([pid])  # only matters if the agent is a subreaper or PID 1
            self._set_status(name, STOPPED)

    def _signal(self, cid: str, sig: int) -> None:
        try:
            self.runc.kill(cid, sig)
        except (Conflict, NotFound):
            pass  # it stopped meanwhile: that is what we want

    def _wait_stopped(self, cid: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            st = self.runc.state(cid)
            if st is None or st.get("status") not in LIVE_STATUSES:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def exec(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        cwd: str,
        stdin: bytes | None,
        timeout: float | None,
    ) -> ExecResult:
        # no container lock: a long exec must not block stop; runc ends it if the container stops
        self._load(name)
        if not command:
            raise BadRequest("exec needs a command")
        status, _, _ = self._live(name)
        if status != RUNNING:
            raise Conflict(f"container {name} is not running", "start it first")
        with self._named_errors(name):
            return self.runc.exec(self.runc_id(name), list(command), env or {}, cwd or None, stdin, timeout)

    def update_config(self, name: str, config: dict[str, str]) -> ContainerRecord:
        with self._locked(name):
            data = self._load(name)
            old_priv = data.get("config", {}).get("security.privileged") == "true"
            new_priv = config.get("security.privileged") == "true"
            if old_priv != new_priv:
                if self._live(name)[0] == RUNNING:
                    raise Conflict(
                        f"container {name} is running; stop it first to change security.privileged"
                    )
                old_map = self._idmap_of(data)
                new_map = None if new_priv else self.idmap
                self._reshift(name, data, old_map, new_map)
                data["idmap"] = new_map.to_json() if new_map else None
                modes.container_dir(self.container_dir(name), new_map)
            data["config"] = dict(config)
            self._save(name, data)
            return self._record(data, *self._live(name)[:2])

    def _reshift(self, name: str, data: dict[str, Any], old: IdMap | None, new: IdMap | None) -> None:
        """Move the rootfs and every snapshot from ids mapped by ``old`` to ids mapped by ``new``.

        Snapshots are read-only volumes, so each is cloned, shifted and snapshotted again beside the
        original; all of them are prepared before anything visible changes, then swapped in.
        """

        def shift(path: Path) -> None:
            if old is not None:
                shift_out_of(path, old)
            if new is not None:
                shift_into(path, new)

        cdir = self.container_dir(name)
        snapdirs = [cdir / SNAPSHOTS / s["name"] for s in data.get("snapshots", [])]
        try:
            for sdir in snapdirs:
                work = sdir / (ROOTFS + WORK_SUFFIX)
                self.storage.delete_volume(work)
                self.storage.clone_volume(sdir / ROOTFS, work)
                shift(work)
                self.storage.delete_volume(sdir / (ROOTFS + NEW_SUFFIX))
                self.storage.snapshot_volume(work, sdir / (ROOTFS + NEW_SUFFIX))
                self.storage.delete_volume(work)
            shift(cdir / ROOTFS)
        except BaseException:
            for sdir in snapdirs:
                self.storage.delete_volume(sdir / (ROOTFS + WORK_SUFFIX))
                self.storage.delete_volume(sdir / (ROOTFS + NEW_SUFFIX))
            raise
        for sdir in snapdirs:
            self._swap_in(sdir)

    # ----------------------------------------------------------------- snapshots

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

    # ----------------------------------------------------------------- rename and migration

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
