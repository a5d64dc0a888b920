"""The OCI runtime spec (``config.json``) for a *system* container: a full init, not a single app.

Differences from ``runc spec``'s application defaults, each because a system container needs it:
init runs as root with a broad capability set and ``noNewPrivileges`` off (setuid tools like ``su`` and
``ping`` must work inside), the root is writable, and the container gets its own network namespace.
Unprivileged containers also get a user namespace; there mknod is impossible, so runc bind-mounts the
few device nodes an OS needs from the host, and ``/sys`` is the host's bound read-only, as in runc's
rootless spec (a fresh sysfs also mounted in a test here, but the kernel refuses it in a user namespace
wherever the host's /sys is partly hidden by overmounts). Privileged ones get a fresh read-only sysfs and
real device nodes, fenced by a deny-all device cgroup. No cgroup filesystem is mounted in the container.

Every container gets the default seccomp profile (:mod:`hostagent.runtimes.seccomp`: module loading,
kexec, ``open_by_handle_at``, keyrings and forced unmounts fail with EPERM). Privileged ones too, as LXD
does: for them those calls are not attack surface but direct escapes (a module or kexec runs code in
the host kernel, ``open_by_handle_at`` opens host files outside the rootfs, the keyring of their uid 0
is the host root's), and nothing a system container runs needs them.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

from hostagent.runtimes import seccomp
from hostagent.runtimes.idmap import IdMap

OCI_VERSION = "1.0.2-dev"
RLIM_INFINITY_OCI = 2**64 - 1

DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM": "xterm",
    "HOME": "/root",
    "container": "orch",
}

#: every capability the kernel knew as of 5.9 (``CAP_CHECKPOINT_RESTORE``), by number order
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

#: dropped for unprivileged containers as LXD does (sys_time, sys_module, sys_rawio) plus the MAC ones,
#: since no MAC policy is managed here; the rest only acts inside the container's user namespace
UNPRIVILEGED_DROP = {"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE"}

#: host device nodes every container gets (the set runc and LXD both provide)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

#: runc's default masked and read-only paths: kernel interfaces a container must not read or change
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

#: desired (soft, hard) limits; clamped to what the host allows because runc cannot raise hard limits
#: without CAP_SYS_RESOURCE (and on this class of host it does not have it)
DEFAULT_RLIMITS = {"RLIMIT_NOFILE": (1024, 1048576)}


def host_capabilities() -> set[str]:
    """Capabilities in this process's bounding set: runc fails if asked for any other."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                mask = int(line.split()[1], 16)
                return {cap for bit, cap in enumerate(ALL_CAPS) if mask & (1 << bit)}
    except OSError:
        pass
    return set(ALL_CAPS)


def capabilities(privileged: bool) -> list[str]:
    """The container's bounding/effective/permitted set, limited to what the host can grant."""
    wanted = [c for c in ALL_CAPS if privileged or c not in UNPRIVILEGED_DROP]
    available = host_capabilities()
    return [c for c in wanted if c in available]


def _oci_limit(value: int) -> int:
    return RLIM_INFINITY_OCI if value == resource.RLIM_INFINITY else value


def clamp_rlimits(wanted: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """OCI rlimit entries: each wanted (soft, hard) capped at the host's current hard limit."""
    out = []
    for name, (soft, hard) in wanted.items():
        host_hard = resource.getrlimit(getattr(resource, name))[1]
        if host_hard != resource.RLIM_INFINITY:
            hard = min(hard, host_hard)
        soft = min(soft, hard)
        out.append({"type": name, "soft": _oci_limit(soft), "hard": _oci_limit(hard)})
    return out


def _device_node(name: str) -> dict[str, Any]:
    """``linux.devices`` entry copying the host node's type and numbers."""
    st = os.stat(f"/dev/{name}")
    return {
        "path": f"/dev/{name}",
        "type": "c",
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": 0o666,
        "uid": 0,
        "gid": 0,
    }


def _device_rules(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Device cgroup rules: deny all, then allow the listed nodes and ptys (no container may open disks)."""
    allow = [
        {"allow": True, "type": "c", "major": d["major"], "minor": d["minor"], "access": "rwm"}
        for d in devices
    ]
    allow.append({"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"})  # /dev/ptmx
    allow.append({"allow": True, "type": "c", "major": 136, "access": "rwm"})  # /dev/pts/*
    return [{"allow": False, "access": "rwm"}, *allow]


def _mounts(privileged: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            # gid is read in the container's user namespace, so 5 is the container's tty group either way
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
    ]
    if privileged:
        mounts.append(
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
        )
    return mounts


def make_spec(
    rootfs: Path,
    hostname: str,
    args: list[str],
    idmap: IdMap | None,
    env: dict[str, str] | None = None,
    cgroups_path: str | None = None,
    rlimits: dict[str, tuple[int, int]] | None = None,
    terminal: bool = False,
) -> dict[str, Any]:
    """An OCI ``config.json`` for a system container whose init is ``args``.

    ``terminal``: the init's stdio is a console runc creates (and hands over its ``--console-socket``).

    ``idmap`` None means privileged: no user namespace, container root is host root. ``cgroups_path``
    names the container's cgroup (runc's default is ``/<id>``, shared by every runc on the machine).
    """
    privileged = idmap is None
    caps = capabilities(privileged)
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "seccomp": seccomp.default_profile(),
    }
    # runc creates these nodes (bind-mounting the host's inside a user namespace, where mknod is not
    # allowed). Explicit bind mounts in "mounts" would clash with that: runc opens each target, and opening
    # a bound /dev/tty without a controlling terminal fails with ENXIO. Listing devices here makes runc drop
    # its default cgroup allow rules for them, so the rules are spelled out below.
    linux["devices"] = [_device_node(name) for name in DEVICES]
    linux["resources"] = {"devices": _device_rules(linux["devices"])}
    if idmap is not None:
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = idmap.uid_mappings()
        linux["gidMappings"] = idmap.gid_mappings()
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [f"{k}={v}" for k, v in {**DEFAULT_ENV, **(env or {})}.items()],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": clamp_rlimits(rlimits if rlimits is not None else DEFAULT_RLIMITS),
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(privileged),
        "linux": linux,
    }
