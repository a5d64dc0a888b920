"""A thin wrapper around the ``runc`` command line, one state directory per agent.

Every call is an argument list (never a shell string). runc's own failures come back as
:mod:`orchapi.errors` exceptions whose message is runc's error in one line; that is what users see.

Zombies: ``runc run -d`` exits once the container's init is running, so the init is reparented to the
nearest child subreaper or to PID 1. Measured on the development sandbox, PID 1 (``process_api``) reaps
orphans within about a second, as systemd does on a normal host, so the agent needs no reaper there.
:func:`become_subreaper` and :func:`reap_children` exist for hosts where that is not true (the agent
running as PID 1 of a plain container, or under a supervisor that never calls wait()).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchapi.errors import Conflict, InternalError, NotFound, OrchError

_PR_SET_CHILD_SUBREAPER = 36
_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def summarize(text: str | bytes, limit: int = 400) -> str:
    """runc's error output as one line: the last logged message, else the last non-empty line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    messages: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and "msg" in entry:
                if entry.get("level") in ("error", "fatal", "warning"):
                    messages.append(str(entry["msg"]))
                continue
        found = _MSG.findall(line)
        if found:
            messages.extend(m.replace('\\"', '"').replace("\\\\", "\\") for m in found)
        else:
            messages.append(line)
    out = messages[-1] if messages else "no error output"
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


def error_from_runc(action: str, message: str) -> OrchError:
    """Pick the API error class for one of runc's error messages."""
    lower = message.lower()
    if "does not exist" in lower:
        return NotFound(f"{action}: {message}")
    if any(
        s in lower for s in ("not running", "not stopped", "already exists", "id exists", "stopped container")
    ):
        return Conflict(f"{action}: {message}")
    return InternalError(f"{action}: {message}")


def become_subreaper() -> bool:
    """Make this process the reaper of orphaned descendants (containers' inits) via prctl(2).

    Returns False where prctl is unavailable. After this the caller *must* reap: see :func:`reap_children`.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children(pids: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """Collect exited children without blocking; returns (pid, wait status) pairs.

    With ``pids`` only those are reaped: the safe form, because a blind ``waitpid(-1)`` would also steal
    the exit status of a ``subprocess`` child another thread is about to wait for (that thread would then
    see return code 0). Without ``pids`` every exited child is reaped: only for a process that runs no
    concurrent subprocesses.
    """
    reaped: list[tuple[int, int]] = []
    if pids is not None:
        for pid in pids:
            if pid <= 0:
                continue  # waitpid(0 or -n) would reap whole process groups
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # not our child (reaped by PID 1 or a subreaper)
            if got:
                reaped.append((got, status))
        return reaped
    while True:
        try:
            got, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if not got:
            break
        reaped.append((got, status))
    return reaped


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, found through /proc (parents first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def private_dir(path: Path) -> Path:
    """Make ``path`` a directory only this user can enter, refusing one someone else owns or a symlink
    (mkdir's ``exist_ok`` would accept either, and chmod would not change who controls it)."""
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise InternalError(f"refusing {path}: it is not a directory owned by uid {os.geteuid()}")
    os.chmod(path, 0o700)
    return path


class Runc:
    """runc with a private ``--root``, so two agents on one machine never see each other's containers.

    ``run_dir`` (default: ``run/`` beside the root) holds the pid and log files of execs. It is private
    (0700, this user's) because the agent trusts what is in them: the pid file says which process tree
    to SIGKILL on a timeout. In a shared ``/tmp`` a local user could pre-create the names runc writes
    (the exec then fails) or plant a pid of their choosing.
    """

    def __init__(
        self, root: Path, binary: str = "runc", command_timeout: float = 120.0, run_dir: Path | None = None
    ) -> None:
        self.root = private_dir(Path(root))
        self.run_dir = private_dir(Path(run_dir) if run_dir is not None else self.root.parent / "run")
        self.binary = binary
        self.command_timeout = command_timeout

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), "--log-format", "json", *args]

    def _run(self, action: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run a short runc command; raise the matching API error if it fails."""
        try:
            proc = subprocess.run(
                self._argv(*args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.command_timeout,
            )
        except FileNotFoundError as exc:
            raise InternalError(f"{action}: runc is not installed ({self.binary} not found)") from exc
        except subprocess.TimeoutExpired as exc:
            raise InternalError(f"{action}: runc did not answer within {self.command_timeout:.0f}s") from exc
        if proc.returncode != 0:
            raise error_from_runc(action, summarize(proc.stderr))
        return proc

    def run_detached(
        self, cid: str, bundle: Path, console_log: Path, pid_file: Path, console_socket: Path | None = None
    ) -> int:
        """Start the container's init in the background; returns its host pid.

        With ``console_socket`` (and ``terminal`` in the bundle's spec) the init's stdio is a console
        whose master runc sends there; ``console_log`` then gets only runc's own messages. Without, stdin
        is /dev/null and stdout/stderr append to ``console_log``, so the init never blocks on a full pipe
        and keeps its output going after the agent exits. runc's own error messages land there too.
        """
        fd = os.open(console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        console = ["--console-socket", str(console_socket)] if console_socket is not None else []
        try:
            proc = subprocess.run(
                self._argv(
                    "run", "--detach", *console, "--pid-file", str(pid_file), "--bundle", str(bundle), cid
                ),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                timeout=self.command_timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise InternalError(
                f"starting {cid}: runc did not return within {self.command_timeout:.0f}s"
            ) from exc
        finally:
            os.close(fd)
        if proc.returncode != 0:
            raise error_from_runc(f"starting {cid}", summarize(_tail(console_log)))
        return int(Path(pid_file).read_text().strip())

    def state(self, cid: str) -> dict[str, Any] | None:
        """runc's state of ``cid`` (``status`` is created/running/paused/stopped), None if runc has none.

        runc keeps a container's state in ``<root>/<cid>/``, and only there: without that directory it
        has none to report, so no ``runc state`` is spawned (most status reads of a stopped container —
        every step of a move asks — cost a stat instead of a process).
        """
        if not os.path.isdir(self.root / cid):
            return None
        try:
            proc = self._run(f"state of {cid}", "state", cid)
        except NotFound:
            return None
        return json.loads(proc.stdout)

    def list(self) -> list[dict[str, Any]]:
        """Every container in this root, as ``runc list --format json`` describes them."""
        proc = self._run("listing containers", "list", "--format", "json")
        return json.loads(proc.stdout or b"null") or []

    def kill(self, cid: str, sig: int | str = signal.SIGTERM, all_processes: bool = False) -> None:
        """Send ``sig`` to the container's init (or, ``all_processes``, to every process in it)."""
        args = ["kill"] + (["--all"] if all_processes else []) + [cid, str(int(sig))]
        self._run(f"signalling {cid}", *args)

    def delete(self, cid: str, force: bool = False) -> None:
        """Forget a stopped container (``force`` kills it first); a missing container is fine."""
        try:
            self._run(f"deleting {cid}", "delete", *(["--force"] if force else []), cid)
        except NotFound:
            pass


def _tail(path: Path, max_bytes: int = 4096) -> str:
    """The last few KiB of a file (for error messages), empty if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail_lines(path: Path, lines: int = 5) -> str:
    """The last ``lines`` non-empty lines of a console log joined into one line (for error messages).

    runc's own JSON log lines are left out: callers report runc's error separately.
    """
    found = [
        line.strip() for line in _tail(path).splitlines() if line.strip() and not line.startswith('{"level":')
    ]
    return " | ".join(found[-lines:])
