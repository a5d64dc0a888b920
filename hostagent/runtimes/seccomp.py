"""The default seccomp profile of native containers (``linux.seccomp`` in the OCI spec), as LXD's.

Defence in depth, not the fence: an unprivileged container's root already lacks the host capabilities
these calls need, and its user namespace is the boundary. The filter removes kernel attack surface that
a system container never needs, so a kernel bug behind one of these calls, or a capability check that a
future kernel relaxes for user namespaces, cannot be reached from inside. Everything else is allowed
(``SCMP_ACT_ALLOW`` by default): a system container runs arbitrary distributions whose init, mount,
unshare, ptrace and reboot(2) (a container's shutdown) must keep working. Denied calls fail with EPERM,
the answer software already handles for "not allowed here" (LXD's own policy started with errno 1
and now says ENOSYS; EPERM is what Docker answers).

Denied, by group (what each would give the container if the kernel let it through):

- **Kernel code**: ``init_module``, ``finit_module``, ``delete_module``, ``kexec_load``,
  ``kexec_file_load``: loading, unloading or replacing the host's kernel is running code outside
  every namespace. LXD's default policy denies these (it has no kexec_file_load, which is newer).
- **File handles**: ``open_by_handle_at`` opens any inode of a filesystem by its handle, bypassing the
  path walk and so the container's root: the "shocker" breakout. LXD's default policy denies it.
- **Keyrings**: ``keyctl``, ``add_key``, ``request_key``: the kernel keyring is not fully namespaced
  (keys of the same uid, quotas, ``/proc/keys``, and a long record of keyring bugs). Docker's default
  profile denies them; software such as systemd treats EPERM here as "no keyring" and carries on.
- **Forced unmount**: ``umount2`` with ``MNT_FORCE`` (LXD's ``reject_force_umount``): forcing aborts
  the in-flight requests of a whole superblock (NFS, FUSE), which the host may share with the
  container through a bind mount. A plain ``umount`` stays allowed.

LXD's other lists are opt-in there and stay out here: the 32-bit compat denylist
(``security.syscalls.deny_compat``) and the rules that protect its syscall-interception supervisor.
"""

from __future__ import annotations

import platform
from typing import Any

#: errno returned by denied calls
EPERM = 1
#: ``MNT_FORCE`` from <sys/mount.h>, the flag ``umount2``'s second argument must not carry
MNT_FORCE = 1

#: calls denied whatever their arguments, grouped as in the module docstring
DENIED = (
    # kernel code
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    # file handles
    "open_by_handle_at",
    # keyrings
    "keyctl", "add_key", "request_key",
)  # fmt: skip

#: libseccomp architectures per ``platform.machine()``: the native ABI plus the others the same kernel
#: runs, so that 32-bit programs work and meet the same denials. A filter without them kills every
#: call made through another ABI (measured with runc 1.1.5: an i386 ``int 0x80`` call dies of SIGSYS)
ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}


def architectures(machine: str | None = None) -> list[str]:
    """The libseccomp architectures for ``machine`` (default: this host); empty if unknown, which
    leaves runc to its native architecture."""
    return list(ARCHITECTURES.get(machine or platform.machine(), []))


def default_profile(machine: str | None = None) -> dict[str, Any]:
    """The ``linux.seccomp`` object: allow everything but the calls in :data:`DENIED` and forced
    unmounts, which fail with EPERM."""
    deny = {"action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    profile: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": list(DENIED), **deny},
            {
                "names": ["umount2"],
                **deny,
                # masked equality: (flags & MNT_FORCE) == MNT_FORCE
                "args": [{"index": 1, "value": MNT_FORCE, "valueTwo": MNT_FORCE, "op": "SCMP_CMP_MASKED_EQ"}],
            },
        ],
    }
    arches = architectures(machine)
    if arches:
        profile["architectures"] = arches
    return profile
