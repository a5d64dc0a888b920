"""Creating, starting, stopping, running commands in, reconfiguring and deleting native containers."""

from __future__ import annotations

import functools
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostagent.console import native as consoles
from hostagent.execsession.base import ExecProcess, ExecSpec
from hostagent.execsession.runc import RuncExec
from hostagent.jsonfile import write_json
from hostagent.runtimes import modes, runc_exec
from hostagent.runtimes.base import (
    RUNNING,
    STOPPED,
    ContainerRecord,
    ExecResult,
)
from hostagent.runtimes.idmap import IdMap, shift_into, shift_out_of
from hostagent.runtimes.native.base import (
    CONSOLE,
    CREATING,
    DEFAULT_INIT,
    DELETING,
    KILL_WAIT,
    LIVE_STATUSES,
    NEW_SUFFIX,
    PIDFILE,
    RECORD,
    ROOTFS,
    RUNC_LOG,
    SNAPSHOTS,
    SPEC,
    START_SETTLE,
    WORK_SUFFIX,
    NativeBase,
)
from hostagent.runtimes.native.host import (
    halt_signal,
    read_pid,
    utc_now,
)
from hostagent.runtimes.oci import make_spec
from hostagent.runtimes.runc import reap_children, tail_lines
from orchapi.errors import BadRequest, Conflict, InternalError, NotFound, OrchError


class Lifecycle(NativeBase):
    """What changes a container's state (each under the container's lock)."""

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
        self.delete_aside(name)()

    def delete_aside(self, name: str) -> Callable[[], None]:
        with self._locked(name), self._named_errors(name):
            data = self._load(name)
            status, _, st = self._live(name)
            if status == RUNNING:
                raise Conflict(f"container {name} is running; stop it first or use --force")
            if st is not None:
                self._forget_runc(name, data)
            # renamed aside: the name is gone at once (one rename, however large the tree), and
            # recover() removes a .deleting- dir that a crash left behind
            doomed = self.containers_dir / f"{DELETING}{name}-{secrets.token_hex(4)}"
            os.rename(self.container_dir(name), doomed)
        return functools.partial(self._delete_tree, doomed)

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
            init = [data.get("init") or DEFAULT_INIT]
            spec = make_spec(bundle / ROOTFS, name, init, self._idmap_of(data), terminal=True)
            write_json(bundle / SPEC, spec)
            runc_log = bundle / RUNC_LOG
            (bundle / PIDFILE).unlink(missing_ok=True)  # a stale pid must never be reaped by mistake
            with open(runc_log, "wb"):
                pass  # one boot per log
            keeper = consoles.start_keeper(bundle)
            try:
                pid = self.runc.run_detached(cid, bundle, runc_log, bundle / PIDFILE, keeper.runc_socket)
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
                keeper.stop()
                self._set_status(name, STOPPED)
                reap_children([read_pid(bundle / PIDFILE)])
                tail = tail_lines(bundle / CONSOLE, 3) or tail_lines(runc_log, 3)
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
            raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")
        with self._named_errors(name):
            return runc_exec.collect(
                self.runc, self.runc_id(name), list(command), env or {}, cwd or None, stdin, timeout
            )

    def exec_process(self, name: str, spec: ExecSpec) -> ExecProcess:
        self._load(name)
        if self._live(name)[0] != RUNNING:
            raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")
        return RuncExec(self.runc, self.runc_id(name), spec)

    def console_process(self, name: str, width: int, height: int) -> ExecProcess:
        self._load(name)
        if self._live(name)[0] != RUNNING:
            raise Conflict(f"container {name} is not running", f"start it first: orch start {name}")
        return consoles.KeeperAttachment(consoles.attach_socket(self.container_dir(name)), width, height)

    def console_log(self, name: str) -> bytes:
        self._load(name)
        return consoles.console_log(self.container_dir(name))

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
