"""What the native runtime asks of the host about containers: names, liveness, processes, memory.

Pure functions of paths and pids, so the runtime's classes stay about state (see __init__.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
from datetime import UTC, datetime
from pathlib import Path


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


def read_pid(path: Path) -> int:
    """The pid runc wrote, 0 if there is none."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
