"""LXD hosts that don't trust each other: what an LXD target refuses, and what local users cannot reach.

Against the real LXD lab (tests/lxdlab.py): an LXD container asking for host privileges (``raw.lxc``,
``security.privileged``, a ``unix-char`` device, a host-path disk) is refused by the target agent before
anything moves, unless the job opts in; a file capability planted on the source host (a compromised
source) is refused after LXD's own migration and the copy removed; the agent's corner of the pool (its
unpacked image cache, staging, scratch) and the adopted container are out of reach of ``nobody``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from hostagent import filecaps
from tests.lxdlab import in_container, instance, last_job, lxc_json
from tests.procs import as_nobody

pytestmark = pytest.mark.skipif(
    not shutil.which("lxd"), reason="lxd is not installed (scripts/test installs it)"
)


@pytest.mark.parametrize(
    ("setup", "named"),
    [
        (("config", "set", "a:c1", "raw.lxc", "lxc.apparmor.profile=unconfined"), "raw.lxc="),
        (("config", "set", "a:c1", "security.privileged", "true"), "security.privileged=true"),
        (
            ("config", "device", "add", "a:c1", "mem", "unix-char", "path=/dev/mem"),
            "device mem (unix-char)",
        ),
        (
            ("config", "device", "add", "a:c1", "host", "disk", "source=/etc", "path=/mnt/etc"),
            "device host (disk /etc)",
        ),
    ],
)
def test_an_lxd_target_refuses_host_privileges_unless_the_job_allows_them(
    lxd_cluster, orch_env, setup, named
):
    lab = lxd_cluster
    lab.lxc("init", "a:bb", "a:c1", "-q")
    lab.lxc(*setup)
    err = orch_env.fails("copy", "la:c1", "lb:")
    assert "does not accept a migrated container with" in err and named in err, err
    assert "--allow-privileged" in err
    assert lxc_json(lab, "list", "b:") == []
    staging = lab.daemons["b"].dir / "storage-pools" / "dir" / ".orch-agent" / "staging"
    assert not list(staging.iterdir())
    orch_env.run("copy", "la:c1", "lb:", "--allow-privileged")
    assert last_job(orch_env)["status"] == "succeeded"
    key, value = (setup[3], setup[4]) if setup[1] == "set" else (None, None)
    got = instance(lab, "b", "c1")
    if key:
        assert got["config"][key] == value
    else:
        assert setup[4] in got["devices"]


def test_a_host_capability_is_refused_after_lxds_own_migration(lxd_cluster, orch_env):
    """A compromised source host plants a v2 capability in a started (shifted) container's rootfs; LXD
    moves it (``--method lxd-migration``), orch's check refuses it and the copy is deleted."""
    lab = lxd_cluster
    lab.lxc("launch", "a:bb", "a:c1", "-q")
    lab.lxc("stop", "a:c1")
    rootfs = lab.daemons["a"].dir / "storage-pools" / "dir" / "containers" / "c1" / "rootfs"
    tool = rootfs / "bin" / "busybox"
    os.setxattr(tool, "security.capability", filecaps.granting(1 << 2))
    err = orch_env.fails("copy", "la:c1", "lb:", "--method", "lxd-migration")
    assert "host-level (v2) file capability" in err, err
    assert lxc_json(lab, "list", "b:") == []
    # and by orch's own transfer it is refused before the volume is used
    err = orch_env.fails("copy", "la:c1", "lb:")
    assert "host-level (v2) file capability" in err, err
    assert lxc_json(lab, "list", "b:") == []


def test_the_agents_corner_of_the_pool_is_out_of_local_users_reach(lxd_cluster, orch_env):
    lab = lxd_cluster
    lab.lxc("launch", "a:bb", "a:c1", "-q")
    in_container(lab, "a", "c1", "cp /bin/busybox /root/suid && chmod 4755 /root/suid")
    lab.lxc("stop", "a:c1")
    orch_env.run("copy", "la:c1", "lb:")  # fills lb's image cache and stages the copy
    pool = lab.daemons["b"].dir / "storage-pools" / "dir"
    corner = pool / ".orch-agent"
    cached = sorted((corner / "images").glob("*.rootfs"))
    assert cached, "the copy was pre-filled from an unpacked image in the agent's cache"
    bait = cached[0] / "bin" / "busybox"
    assert bait.exists()
    for path in (corner, corner / "images", corner / "staging", corner / "exporting", cached[0], bait):
        probe = as_nobody(f"ls {path} || cat {path}")
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, (path, probe)
    adopted = pool / "containers" / "c1" / "rootfs" / "root" / "suid"
    assert adopted.exists()
    assert as_nobody(f"test -e {adopted}").returncode != 0
    lab.lxc("start", "b:c1")  # LXD still starts what orch adopted
    assert in_container(lab, "b", "c1", "stat -c %a /root/suid") == "4755\n"
