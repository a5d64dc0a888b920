"""The default seccomp profile, against real runc and real containers (busybox init, sh, exec).

The probe is keyctl(2) because it works in a user namespace when nothing filters it (checked here as
``nobody`` in a fresh user namespace): so an EPERM inside the container is the filter's doing, not a
missing capability. On x86_64 the probe also calls it through the i386 ABI (``int 0x80``), which a
filter listing only x86_64 would not cover.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.runtimes import seccomp
from hostagent.runtimes.idmap import IdMap
from hostagent.runtimes.native import NativeRuntime
from hostagent.runtimes.oci import make_spec
from hostagent.storage.dir import DirDriver
from tests.test_native_runtime import FP, FakeImages, build_rootfs, kill_all, open_up

BASE = 100000
needs_runc = pytest.mark.skipif(
    shutil.which("runc") is None or os.geteuid() != 0, reason="needs root and runc"
)

PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/keyctl.h>

int main(int argc, char **argv) {
    long r;
    if (argc > 1 && strcmp(argv[1], "i386") == 0) {
#if defined(__x86_64__)
        /* keyctl is 288 in the i386 ABI; the kernel returns -errno in eax */
        __asm__ volatile("int $0x80" : "=a"(r)
                         : "a"(288L), "b"((long)KEYCTL_GET_KEYRING_ID), "c"((long)KEY_SPEC_SESSION_KEYRING),
                           "d"(0L)
                         : "memory");
        printf("keyctl %s %ld\n", r < 0 ? "errno" : "ok", r < 0 ? -r : 0L);
#else
        printf("keyctl unsupported 0\n");
#endif
        return 0;
    }
    errno = 0;
    r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    printf("keyctl %s %d\n", r < 0 ? "errno" : "ok", r < 0 ? errno : 0);
    return 0;
}
"""


# ---------------------------------------------------------------------------------------------- profile


def test_profile_denies_lxd_and_docker_lists_with_eperm() -> None:
    profile = seccomp.default_profile("x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    denied = {name for rule in profile["syscalls"] if "args" not in rule for name in rule["names"]}
    assert {
        "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
        "open_by_handle_at", "keyctl", "add_key", "request_key",
    } <= denied  # fmt: skip
    assert all(r["action"] == "SCMP_ACT_ERRNO" and r["errnoRet"] == 1 for r in profile["syscalls"])
    (umount,) = [r for r in profile["syscalls"] if r["names"] == ["umount2"]]
    assert umount["args"] == [{"index": 1, "value": 1, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}]
    # a system container's own needs stay allowed
    assert not denied & {"mount", "umount2", "unshare", "setns", "ptrace", "reboot", "pivot_root", "bpf"}


def test_profile_architectures_follow_the_machine() -> None:
    assert seccomp.default_profile("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "architectures" not in seccomp.default_profile("weird64")  # runc's native architecture
    assert seccomp.default_profile()["architectures"] == seccomp.architectures(platform.machine())


def test_spec_carries_the_profile_for_unprivileged_and_privileged(tmp_path: Path) -> None:
    for idmap in (IdMap(BASE, 65536), None):
        spec = make_spec(tmp_path, "h", ["/sbin/init"], idmap)
        assert spec["linux"]["seccomp"] == seccomp.default_profile()
        assert spec["process"]["noNewPrivileges"] is False  # setuid tools inside keep working


# ---------------------------------------------------------------------------------------------- real runc


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The keyctl probe as a static binary (no libc needed in the busybox rootfs)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build the static keyctl probe")
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE_C)
    built = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(d / "probe"), str(d / "probe.c")], capture_output=True, text=True
    )
    if built.returncode != 0:
        pytest.skip(f"gcc cannot build a static program here (libc6-dev missing?): {built.stderr[-300:]}")
    open_up(d)
    return d / "probe"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[NativeRuntime]:
    image = tmp_path / "image" / "rootfs"
    build_rootfs(image)
    data = tmp_path / "data"
    data.mkdir()
    open_up(data)
    rt = NativeRuntime(data, DirDriver(data), FakeImages(image))
    rt.recover()
    yield rt
    kill_all(rt)


def _install_probe(rt: NativeRuntime, name: str, probe: Path, owner: int) -> None:
    target = rt.container_dir(name) / "rootfs" / "probe"
    shutil.copy2(probe, target)
    os.chown(target, owner, owner)
    target.chmod(0o755)


def _run(rt: NativeRuntime, name: str, *args: str) -> str:
    res = rt.exec(name, list(args), {}, "/", None, 30)
    assert res.returncode == 0, (args, res)
    return res.stdout.decode()


@needs_runc
def test_probe_works_in_a_user_namespace_without_a_filter(probe: Path) -> None:
    """The control: as nobody, in a new user namespace, keyctl succeeds (so EPERM below is the filter)."""
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's unshare and setpriv")
    for abi in ("", "i386"):
        script = f"unshare --user --map-root-user {probe} {abi}"
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0 and "unshare" in out.stderr:
            pytest.skip(f"unprivileged user namespaces are not available here: {out.stderr.strip()}")
        assert out.stdout.split()[:2] in (["keyctl", "ok"], ["keyctl", "unsupported"]), out


@needs_runc
def test_unprivileged_container_is_filtered_and_still_boots_and_execs(
    runtime: NativeRuntime, probe: Path
) -> None:
    runtime.create("sc", FP, {})
    runtime.start("sc")  # busybox init boots under the filter
    _install_probe(runtime, "sc", probe, BASE)  # owned by the container's root
    status = _run(runtime, "sc", "cat", "/proc/1/status")
    assert "Seccomp:\t2" in status  # init itself runs in filter mode
    assert "Seccomp:\t2" in _run(runtime, "sc", "sh", "-c", "cat /proc/self/status")  # and every exec
    assert _run(runtime, "sc", "/probe").split() == ["keyctl", "errno", "1"]  # EPERM
    if platform.machine() == "x86_64":
        assert _run(runtime, "sc", "/probe", "i386").split() == ["keyctl", "errno", "1"]
    # sh -c, pipes, a file written by the container's root: the ordinary work is untouched
    assert _run(runtime, "sc", "sh", "-c", "echo ok | cat > /root/f; cat /root/f; id -u") == "ok\n0\n"
    runtime.stop("sc")  # busybox init still halts on SIGPWR (reboot(2) is not filtered)
    runtime.start("sc")
    assert _run(runtime, "sc", "/probe").split() == ["keyctl", "errno", "1"]
    runtime.stop("sc", force=True)


@needs_runc
def test_privileged_container_gets_the_same_filter(runtime: NativeRuntime, probe: Path) -> None:
    runtime.create("pr", FP, {"security.privileged": "true"})
    runtime.start("pr")
    _install_probe(runtime, "pr", probe, 0)
    assert "Seccomp:\t2" in _run(runtime, "pr", "cat", "/proc/1/status")
    assert _run(runtime, "pr", "/probe").split() == ["keyctl", "errno", "1"]
    # root here has the host's CAP_SYS_ADMIN: without the filter the forced unmount would succeed;
    # the argument rule refuses only MNT_FORCE, a plain umount still works
    forced = runtime.exec("pr", ["busybox", "umount", "-f", "/dev/mqueue"], {}, "/", None, 30)
    assert forced.returncode != 0 and b"Operation not permitted" in forced.stderr
    assert "/dev/mqueue" in _run(runtime, "pr", "cat", "/proc/mounts")
    _run(runtime, "pr", "busybox", "umount", "/dev/mqueue")
    assert "/dev/mqueue" not in _run(runtime, "pr", "cat", "/proc/mounts")
    runtime.stop("pr", force=True)
