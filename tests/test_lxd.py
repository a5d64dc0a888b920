"""The LXD runtime against two real LXD daemons (Debian's lxd 5.0), started by the suite.

Each daemon has its own LXD_DIR, a preseed with ``networks: []``, a ``dir`` pool (the default profile's)
and a ``btrfs`` pool on a loop-mounted file, and an HTTPS port on 127.0.0.1 (see bench/lxd.py, shared
with the benchmark). The orch agents run ``--runtime lxd`` on their unix sockets. After every copy or
move the target is checked with the ``lxc`` CLI itself: the container is listed, has its snapshots and
files, and starts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from bench.lxd import BTRFS_POOL
from tests.lxdlab import (
    check_snapshot_content,
    in_container,
    instance,
    last_job,
    lxc_json,
    lxd_agent,
    make_with_snapshots,
    snapshot_names,
)

pytestmark = pytest.mark.skipif(
    not shutil.which("lxd"), reason="lxd is not installed (scripts/test installs it)"
)


def test_lxd_agent_lists_and_drives_lxd_containers(clean_lab, make_agent, orch):
    la = lxd_agent(make_agent, clean_lab, "a", "la")
    orch.add_remote("la", la)
    clean_lab.lxc("init", "a:bb", "a:made-by-lxc", "-q")
    listed = json.loads(orch.run("list", "la:", "--format", "json").stdout)
    assert [c["name"] for c in listed] == ["made-by-lxc"]
    assert listed[0]["profiles"] == ["default"]
    orch.run("launch", "la:bb", "la:c2")
    assert instance(clean_lab, "a", "c2")["status"] == "Running"
    assert orch.run("exec", "la:c2", "--", "sh", "-c", "echo hello; id -u").stdout == "hello\n0\n"
    assert orch.run("exec", "la:c2", "--", "cat", input="from stdin").stdout == "from stdin"
    orch.run("snapshot", "la:c2", "snap1")
    assert snapshot_names(clean_lab, "a", "c2") == ["snap1"]
    orch.run("stop", "la:c2")
    assert instance(clean_lab, "a", "c2")["status"] == "Stopped"
    orch.run("config", "set", "la:c2", "limits.memory", "64MB")
    assert instance(clean_lab, "a", "c2")["config"]["limits.memory"] == "64MB"
    err = orch.fails("config", "set", "la:c2", "no.such.key", "1")
    assert "Unknown configuration key" in err
    err = orch.fails("launch", "la:bb", "la:c2")
    assert "already exists" in err
    orch.run("delete", "la:c2")
    assert "c2" not in clean_lab.lxc("list", "a:", "--format", "csv", "-c", "n")
    images = json.loads(orch.run("image", "list", "la:", "--format", "json").stdout)
    assert [a["name"] for i in images for a in i["aliases"]] == ["bb"]


def test_images_imported_through_orch_are_lxd_images(clean_lab, make_agent, orch, busybox_image, tmpdir755):
    lb = lxd_agent(make_agent, clean_lab, "b", "lb")
    orch.add_remote("lb", lb)
    bad = tmpdir755 / "hostile.tar"
    subprocess.run(["tar", "-cf", str(bad), "-P", "/etc/hostname"], check=True)  # an absolute member
    err = orch.fails("image", "import", str(bad), "lb:", "--alias", "evil")
    assert "absolute" in err or "metadata.yaml" in err
    assert clean_lab.lxc("image", "list", "b:", "--format", "csv") == ""
    try:
        orch.run("image", "import", str(busybox_image), "lb:", "--alias", "bb2")
        assert "bb2" in clean_lab.lxc("image", "alias", "list", "b:", "--format", "csv")
        orch.run("launch", "lb:bb2", "lb:c1")
        assert instance(clean_lab, "b", "c1")["status"] == "Running"
        assert "already exists" in orch.fails("image", "import", str(busybox_image), "lb:")
    finally:
        clean_lab.lxc("delete", "--force", "b:c1")
        clean_lab.lxc("image", "delete", "b:bb2")


def test_agent_without_a_reachable_lxd_fails_with_one_line(tmpdir755):
    from tests.procs import ORCH_AGENT

    proc = subprocess.run(
        [
            ORCH_AGENT,
            "--data-dir",
            str(tmpdir755 / "agent"),
            "--runtime",
            "lxd",
            "--lxd-socket",
            "/nonexistent/unix.socket",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "orch-agent: error: cannot reach LXD at /nonexistent/unix.socket: no such file or directory "
        "(is lxd running? start it, or give its socket with --lxd-socket)"
    ]


def test_move_between_lxd_hosts_with_snapshots(lxd_cluster, orch_env):
    lab = lxd_cluster
    make_with_snapshots(lab)
    before = instance(lab, "a", "c1")
    orch_env.run("move", "la:c1", "lb:")
    assert "c1" not in lab.lxc("list", "a:", "--format", "csv", "-c", "n")
    after = instance(lab, "b", "c1")
    assert after["status"] == "Stopped"
    assert snapshot_names(lab, "b", "c1") == ["s1", "s2"]
    assert after["config"]["volatile.base_image"] == before["config"]["volatile.base_image"]
    assert after["profiles"] == ["default"]
    lab.lxc("start", "b:c1")
    assert in_container(lab, "b", "c1", "ls /root; cat /root/c") == "b\nc\nthree\n"
    assert in_container(lab, "b", "c1", "stat -c %u:%g /root/c") == "0:0\n"
    check_snapshot_content(lab, "b", "c1")
    info = lab.lxc("info", "b:c1")
    assert "s1" in info and "s2" in info


def test_copy_prefills_from_the_image_and_refresh_sends_the_change(lxd_cluster, orch_env):
    lab = lxd_cluster
    lab.lxc("launch", "a:bb", "a:c1", "-q")
    in_container(lab, "a", "c1", "dd if=/dev/urandom of=/root/blob bs=1024 count=1024 2>/dev/null")
    lab.lxc("snapshot", "a:c1", "s1")
    lab.lxc("stop", "a:c1")
    fingerprint = instance(lab, "a", "c1")["config"]["volatile.base_image"]
    orch_env.run("copy", "la:c1", "lb:")
    first = last_job(orch_env)
    assert first["method"] == "rsync" and first["status"] == "succeeded"
    # the blob twice (snapshot and rootfs) at most, not the busybox image under it
    assert 1 << 20 <= first["bytes_done"] < (2 << 20) + (512 << 10), first["bytes_done"]
    assert fingerprint in lab.lxc("image", "list", "b:", "--format", "csv", "-c", "F")  # pulled into LXD b
    same = "md5sum /root/blob | cut -d' ' -f1"
    lab.lxc("start", "a:c1")
    in_container(lab, "a", "c1", "echo changed > /root/new")
    lab.lxc("stop", "a:c1")
    orch_env.run("copy", "la:c1", "lb:", "--refresh")
    second = last_job(orch_env)
    assert second["bytes_done"] < 256 << 10, second["bytes_done"]
    assert snapshot_names(lab, "b", "c1") == ["s1"]
    lab.lxc("start", "a:c1")
    lab.lxc("start", "b:c1")
    assert in_container(lab, "b", "c1", "cat /root/new") == "changed\n"
    assert in_container(lab, "b", "c1", same) == in_container(lab, "a", "c1", same)
    assert [i["name"] for i in lxc_json(lab, "list", "b:")] == ["c1"]  # the refreshed copy replaced it


def test_stateless_move_of_a_running_lxd_container(lxd_cluster, orch_env):
    lab = lxd_cluster
    lab.lxc("launch", "a:bb", "a:c1", "-q")
    in_container(lab, "a", "c1", "echo alive > /root/state")
    err = orch_env.fails("move", "la:c1", "lb:")
    assert "is running" in err and "--stateless" in err
    orch_env.run("move", "la:c1", "lb:", "--stateless")
    assert lxc_json(lab, "list", "a:") == []
    assert instance(lab, "b", "c1")["status"] == "Running"
    assert in_container(lab, "b", "c1", "cat /root/state") == "alive\n"


def test_moves_between_native_and_lxd_hosts_both_ways(lxd_cluster, make_agent, orch_env, busybox_image):
    lab = lxd_cluster
    foo = make_agent("foo")
    orch_env.add_remote("foo", foo)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    orch_env.run("launch", "foo:bb", "foo:c1")
    orch_env.run("exec", "foo:c1", "--", "sh", "-c", "echo native > /root/origin")
    orch_env.run("snapshot", "foo:c1", "s1")
    orch_env.run("exec", "foo:c1", "--", "sh", "-c", "echo later > /root/later")
    orch_env.run("stop", "foo:c1")
    orch_env.run("move", "foo:c1", "lb:")
    assert not (foo.data_dir / "containers" / "c1").exists()
    assert snapshot_names(lab, "b", "c1") == ["s1"]
    lab.lxc("start", "b:c1")  # LXD re-shifts the native id map into its own on this first start
    assert in_container(lab, "b", "c1", "cat /root/origin /root/later") == "native\nlater\n"
    assert in_container(lab, "b", "c1", "stat -c %u:%g /root/origin") == "0:0\n"
    in_container(lab, "b", "c1", "echo lxd > /root/back")
    lab.lxc("stop", "b:c1")
    orch_env.run("move", "lb:c1", "foo:")
    assert lxc_json(lab, "list", "b:") == []
    shown = json.loads(orch_env.run("list", "foo:", "--format", "json").stdout)
    assert [(c["name"], c["snapshots"]) for c in shown] == [("c1", ["s1"])]
    orch_env.run("start", "foo:c1")
    assert orch_env.run("exec", "foo:c1", "--", "cat", "/root/back").stdout == "lxd\n"
    assert orch_env.run("exec", "foo:c1", "--", "stat", "-c", "%u:%g", "/root/back").stdout == "0:0\n"


def test_lxd_migration_method_on_request(lxd_cluster, orch_env):
    lab = lxd_cluster
    make_with_snapshots(lab)
    orch_env.run("move", "la:c1", "lb:", "--method", "lxd-migration")
    record = last_job(orch_env)
    assert record["method"] == "lxd-migration" and record["status"] == "succeeded"
    assert record["bytes_done"] > 1 << 20  # what LXD moved (three volumes of the busybox rootfs at least)
    assert lxc_json(lab, "list", "a:") == []
    assert snapshot_names(lab, "b", "c1") == ["s1", "s2"]
    lab.lxc("start", "b:c1")
    assert in_container(lab, "b", "c1", "ls /root") == "b\nc\n"
    check_snapshot_content(lab, "b", "c1")


def test_a_profile_missing_on_the_target_is_refused_before_anything_moves(lxd_cluster, orch_env):
    lab = lxd_cluster
    lab.lxc("profile", "create", "a:extra")
    try:
        lab.lxc("init", "a:bb", "a:c1", "-p", "default", "-p", "extra", "-q")
        err = orch_env.fails("move", "la:c1", "lb:")
        assert "profile 'extra'" in err and "does not exist on the target" in err
        assert [i["name"] for i in lxc_json(lab, "list", "a:")] == ["c1"]
        assert lxc_json(lab, "list", "b:") == []
        assert not list(
            (lab.daemons["b"].dir / "storage-pools" / "dir" / ".orch-agent" / "staging").iterdir()
        )
    finally:
        lab.lxc("delete", "--force", "a:c1")
        lab.lxc("profile", "delete", "a:extra")


def test_copy_between_btrfs_pools_sends_subvolumes_then_refreshes(btrfs_cluster, orch_env):
    lab = btrfs_cluster
    orch_env.run("launch", "la:bb", "la:c1")  # on the agent's pool, not the default profile's
    assert instance(lab, "a", "c1")["expanded_devices"]["root"]["pool"] == BTRFS_POOL
    orch_env.run("exec", "la:c1", "--", "sh", "-c", "echo one > /root/a")
    orch_env.run("snapshot", "la:c1", "s1")
    orch_env.run("exec", "la:c1", "--", "sh", "-c", "echo two > /root/b; rm /root/a")
    orch_env.run("snapshot", "la:c1", "s2")
    orch_env.run("stop", "la:c1")
    orch_env.run("copy", "la:c1", "lb:")
    assert last_job(orch_env)["method"] == "btrfs"
    # a refresh after a change (rsync: an incremental send needs a parent the target got from this source)
    orch_env.run("start", "la:c1")
    orch_env.run("exec", "la:c1", "--", "sh", "-c", "echo three > /root/c")
    orch_env.run("stop", "la:c1")
    orch_env.run("copy", "la:c1", "lb:", "--refresh")
    assert last_job(orch_env)["method"] == "rsync" and last_job(orch_env)["bytes_done"] < 256 << 10
    lab.lxc("delete", "a:c1")
    moved = instance(lab, "b", "c1")
    assert moved["expanded_devices"]["root"]["pool"] == BTRFS_POOL
    assert snapshot_names(lab, "b", "c1") == ["s1", "s2"]
    volume = lab.daemons["b"].dir / "storage-pools" / BTRFS_POOL / "containers" / "c1"
    show = subprocess.run(["btrfs", "subvolume", "show", str(volume)], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    lab.lxc("start", "b:c1")
    assert in_container(lab, "b", "c1", "ls /root") == "b\nc\n"
    check_snapshot_content(lab, "b", "c1")


def test_evacuate_and_restore_an_lxd_host(lxd_cluster, orch_env):
    lab = lxd_cluster
    o = orch_env
    lab.lxc("launch", "a:bb", "a:run1", "-q")
    in_container(lab, "a", "run1", "echo kept > /root/data")
    lab.lxc("snapshot", "a:run1", "s1")
    lab.lxc("init", "a:bb", "a:off1", "-q")
    lab.lxc("launch", "a:bb", "a:pinned", "-q")
    o.run("config", "set", "la:pinned", "evacuate", "skip")
    assert instance(lab, "a", "pinned")["config"]["user.orch.evacuate"] == "skip"
    plan = {
        p["container"]: p for p in json.loads(o.run("evacuate", "la:", "--plan", "--format", "json").stdout)
    }
    assert plan["pinned"]["action"] == "skip"
    assert plan["run1"]["target"] == "lb" and plan["off1"]["target"] == "lb"

    o.run("evacuate", "la:", "--yes", timeout=600)
    assert [i["name"] for i in lxc_json(lab, "list", "a:")] == ["pinned"]
    on_b = {i["name"]: i for i in lxc_json(lab, "list", "b:")}
    assert on_b["run1"]["status"] == "Running" and on_b["off1"]["status"] == "Stopped"
    assert snapshot_names(lab, "b", "run1") == ["s1"]
    assert in_container(lab, "b", "run1", "cat /root/data") == "kept\n"
    lab.lxc("start", "b:off1")  # the stopped one is stopped, not broken
    assert instance(lab, "b", "off1")["status"] == "Running"
    lab.lxc("stop", "b:off1", "--force")
    row = next(line for line in o.run("hosts").stdout.splitlines() if "| la " in line)
    assert "EVACUATED" in row and "lxd/dir" in row

    o.run("restore", "la:", timeout=600)
    on_a = {i["name"]: i for i in lxc_json(lab, "list", "a:")}
    assert set(on_a) == {"run1", "off1", "pinned"} and lxc_json(lab, "list", "b:") == []
    assert on_a["run1"]["status"] == "Running" and on_a["off1"]["status"] == "Stopped"
    assert in_container(lab, "a", "run1", "cat /root/data") == "kept\n"
    assert snapshot_names(lab, "a", "run1") == ["s1"]


def test_what_a_native_host_cannot_honour_is_refused_not_dropped(lxd_cluster, make_agent, orch_env):
    lab = lxd_cluster
    orch_env.add_remote("foo", make_agent("foo"))
    lab.lxc("init", "a:bb", "a:c1", "-q")
    lab.lxc("config", "device", "add", "a:c1", "extra", "none")
    err = orch_env.fails("move", "la:c1", "foo:")
    assert "cannot honour the container's device(s) extra" in err
    lab.lxc("config", "device", "remove", "a:c1", "extra")
    lab.lxc("config", "set", "a:c1", "limits.memory", "64MB")
    err = orch_env.fails("move", "la:c1", "foo:")
    assert "cannot honour config key(s) limits.memory" in err
    assert [i["name"] for i in lxc_json(lab, "list", "a:")] == ["c1"]
    assert json.loads(orch_env.run("list", "foo:", "--format", "json").stdout) == []
    lab.lxc("config", "unset", "a:c1", "limits.memory")
    orch_env.run("move", "la:c1", "foo:")  # LXD's image.* and volatile.* keys are its own bookkeeping
    moved = json.loads(orch_env.run("list", "foo:", "--format", "json").stdout)[0]
    assert not [
        k for k in moved["config"] if k.startswith(("image.", "volatile.")) and k != "volatile.base_image"
    ]


def test_a_container_on_another_pool_falls_back_to_lxd_migration(lxd_cluster, make_agent, orch_env):
    lab = lxd_cluster
    orch_env.add_remote("foo", make_agent("foo"))
    lab.lxc("init", "a:bb", "a:c1", "-s", BTRFS_POOL, "-q")  # the agent la serves the dir pool
    err = orch_env.fails("move", "la:c1", "foo:")
    assert "no transfer method in common" in err and "is on LXD pool 'btrfs'" in err
    orch_env.run("move", "la:c1", "lb:")
    assert last_job(orch_env)["method"] == "lxd-migration"
    assert lxc_json(lab, "list", "a:") == []
    lab.lxc("start", "b:c1")
    assert instance(lab, "b", "c1")["status"] == "Running"


def test_a_stray_volume_on_the_target_pool_is_refused_and_kept(lxd_cluster, orch_env):
    lab = lxd_cluster
    lab.lxc("init", "a:bb", "a:c1", "-q")
    stray = lab.daemons["b"].dir / "storage-pools" / "dir" / "containers" / "c1"
    stray.mkdir()
    (stray / "precious").write_text("left by someone")
    try:
        err = orch_env.fails("copy", "la:c1", "lb:")
        assert "holds a volume named c1" in err
        assert (stray / "precious").read_text() == "left by someone"
        assert lxc_json(lab, "list", "b:") == [] and [i["name"] for i in lxc_json(lab, "list", "a:")] == [
            "c1"
        ]
    finally:
        shutil.rmtree(stray)


def test_cancelling_an_lxd_migration_leaves_the_source_and_no_target(lxd_cluster, orch_env):
    from tests.test_copy_move import job

    lab = lxd_cluster
    rootfs = lab.create("a", "c1", "dir", image="bb")
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={rootfs / 'big'}", "bs=1M", "count=300", "status=none"], check=True
    )
    job_id = orch_env.run("move", "la:c1", "lb:", "--method", "lxd-migration", "--no-wait").stdout.strip()
    deadline = time.time() + 60
    while job(orch_env, job_id)["stage"] != "LXD is moving the data" and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # LXD is moving the 300 MB now (zlib-compressed rsync: ~20 MB/s here)
    orch_env.run("jobs", "cancel", job_id, check=False)
    while (
        job(orch_env, job_id)["status"] not in ("cancelled", "failed", "succeeded") and time.time() < deadline
    ):
        time.sleep(0.2)
    record = job(orch_env, job_id)
    if record["status"] == "succeeded":  # LXD won the race: then the move is complete and verified
        assert lxc_json(lab, "list", "a:") == [] and [i["name"] for i in lxc_json(lab, "list", "b:")] == [
            "c1"
        ]
        return
    assert record["status"] == "cancelled", record
    assert [i["name"] for i in lxc_json(lab, "list", "a:")] == ["c1"]
    while lxc_json(lab, "list", "b:") and time.time() < deadline + 60:  # LXD b gives up on its pull
        time.sleep(0.5)
    assert lxc_json(lab, "list", "b:") == []
    assert (rootfs / "big").stat().st_size == 300 << 20


def test_an_adoption_cut_short_by_a_crash_is_undone_at_the_next_start(clean_lab, make_agent):
    """The agent died after moving a received container's volumes into the pool and before LXD adopted
    them: its next start takes them back out, so the pool holds nothing LXD does not know."""
    pool = clean_lab.daemons["a"].dir / "storage-pools" / "dir"
    staging = pool / ".orch-agent" / "staging" / "c9-deadbeef"
    placed = [(staging / "containers" / "c9", pool / "containers" / "c9")]
    placed.append((staging / "containers-snapshots" / "c9", pool / "containers-snapshots" / "c9"))
    (placed[0][1] / "rootfs").mkdir(parents=True)
    placed[1][1].mkdir(parents=True)
    (placed[0][0].parent).mkdir(parents=True)
    (placed[1][0].parent).mkdir(parents=True)
    moves = [[str(a), str(b)] for a, b in placed]
    (staging / "adopting.json").write_text(json.dumps({"name": "c9", "moves": moves}))
    lxd_agent(make_agent, clean_lab, "a", "la")
    assert not placed[0][1].exists() and not placed[1][1].exists()
    assert not staging.exists()
    assert lxc_json(clean_lab, "list", "a:") == []


def test_a_refresh_cut_short_by_a_crash_gives_the_old_container_back(clean_lab, make_agent):
    """The agent died during a refresh's swap, after renaming the old container aside and moving its kept
    snapshot into staging: the next start puts the snapshot back and gives the container its name back."""
    lab = clean_lab
    lab.lxc("init", "a:bb", "a:c1", "-q")
    lab.lxc("snapshot", "a:c1", "s1")
    pool = lab.daemons["a"].dir / "storage-pools" / "dir"
    (pool / "containers-snapshots" / "c1" / "s1" / "rootfs" / "kept").write_text("old snapshot")
    aside = "c1-orch-old-abc123"
    lab.lxc("move", "a:c1", f"a:{aside}")
    staging = pool / ".orch-agent" / "staging" / "c1-feedf00d"
    (staging / "containers-snapshots" / "c1").mkdir(parents=True)
    kept = (pool / "containers-snapshots" / aside / "s1", staging / "containers-snapshots" / "c1" / "s1")
    kept[0].rename(kept[1])
    record = {"name": "c1", "aside": aside, "kept": [[str(kept[0]), str(kept[1])]], "moves": []}
    (staging / "adopting.json").write_text(json.dumps(record))
    lxd_agent(make_agent, lab, "a", "la")
    assert [i["name"] for i in lxc_json(lab, "list", "a:")] == ["c1"]
    assert snapshot_names(lab, "a", "c1") == ["s1"]
    assert (pool / "containers-snapshots" / "c1" / "s1" / "rootfs" / "kept").read_text() == "old snapshot"
    assert not staging.exists()


def test_btrfs_native_and_btrfs_lxd_hosts_use_rsync_between_them(
    btrfs_cluster, orch_env, busybox_image, tmpdir755
):
    """Both store on btrfs, but a native volume is a bare rootfs and an LXD one holds rootfs/ and
    metadata: btrfs streams cannot go from one to the other, so the agents agree on rsync."""
    from tests.conftest import PASSWORD
    from tests.procs import AgentProcess

    lab = btrfs_cluster
    data = lab.daemons["b"].btrfs_mount / "native-foo"  # a btrfs filesystem of its own for a native agent
    foo = AgentProcess(data, "foo").start()
    try:
        foo.set_trust_password(PASSWORD, tmpdir755 / "admin-foo")
        orch_env.add_remote("foo", foo)
        assert "Transfer methods: btrfs, rsync, tar" in orch_env.run("info", "foo:").stdout
        orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
        orch_env.run("init", "foo:bb", "foo:c1")
        orch_env.run("move", "foo:c1", "la:")
        assert last_job(orch_env)["method"] == "rsync"
        assert instance(lab, "a", "c1")["expanded_devices"]["root"]["pool"] == BTRFS_POOL
        lab.lxc("start", "a:c1")
        in_container(lab, "a", "c1", "echo via-lxd > /root/f")
        lab.lxc("stop", "a:c1")
        orch_env.run("move", "la:c1", "foo:")
        assert last_job(orch_env)["method"] == "rsync"
        orch_env.run("start", "foo:c1")
        assert orch_env.run("exec", "foo:c1", "--", "cat", "/root/f").stdout == "via-lxd\n"
    finally:
        foo.stop(kill_containers=True)
        shutil.rmtree(data, ignore_errors=True)


def test_an_lxd_shell_through_orch_exec_is_a_real_terminal(clean_lab, make_agent, orch):
    """LXD's exec websockets relayed by the agent: prompt, resize, Ctrl-C, exit status, live output."""
    import re

    import pexpect

    from tests.procs import ORCH

    la = lxd_agent(make_agent, clean_lab, "a", "la")
    orch.add_remote("la", la)
    orch.run("launch", "la:bb", "la:sh1")
    shell = pexpect.spawn(ORCH, ["exec", "la:sh1", "--", "sh"], env={**orch.env, "TERM": "xterm"},
                          dimensions=(24, 80), timeout=30, encoding="utf-8")  # fmt: skip
    prompt = re.compile(r"[#$] (\x1b\[6n)?")
    shell.expect(prompt)
    shell.sendline("stty size")
    shell.expect("24 80")
    shell.setwinsize(33, 101)
    time.sleep(0.5)
    shell.sendline("stty size")
    shell.expect("33 101")
    shell.sendline("sleep 300")
    time.sleep(1)
    shell.sendintr()
    shell.expect(prompt)
    shell.sendline("echo rc=$?")
    shell.expect("rc=130")
    shell.sendline("exit 5")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 5
    streamed = subprocess.Popen([ORCH, "exec", "la:sh1", "--", "sh", "-c", "echo a; sleep 3; echo b"],
                                env=orch.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    assert streamed.stdout is not None
    started = time.monotonic()
    assert streamed.stdout.readline() == b"a\n" and time.monotonic() - started < 2.5
    assert streamed.stdout.readline() == b"b\n" and streamed.wait(10) == 0


def test_an_lxd_console_through_orch_console(clean_lab, make_agent, orch):
    """LXD's console websockets relayed by the agent; its console log through --show-log."""
    import pexpect

    from tests.procs import ORCH

    la = lxd_agent(make_agent, clean_lab, "a", "la")
    orch.add_remote("la", la)
    orch.run("launch", "la:bb", "la:con1")
    con = pexpect.spawn(ORCH, ["console", "la:con1"], env={**orch.env, "TERM": "xterm"}, timeout=30,
                        encoding="utf-8", dimensions=(24, 80))  # fmt: skip
    con.expect("To detach")
    time.sleep(1)
    orch.run("exec", "la:con1", "--", "sh", "-c", "echo lxd-console-line > /dev/console")
    con.expect("lxd-console-line")
    con.send("\x01q")
    con.expect(pexpect.EOF)
    con.close()
    assert con.exitstatus == 0
    assert instance(clean_lab, "a", "con1")["status"] == "Running"
    assert "lxd-console-line" in orch.run("console", "la:con1", "--show-log").stdout


def test_output_is_read_whole_even_after_lxd_closed_the_exec(clean_lab):
    """LXD pings each exec websocket right after the upgrade and closes it when the command ends; the
    output queued behind that ping must still be read (aiohttp's autoping lost it: 14 of 15 times)."""
    import asyncio

    from hostagent.execsession.base import ExecSpec
    from hostagent.execsession.lxd import LxdExec
    from hostagent.lxd.client import LxdClient

    clean_lab.lxc("launch", "a:bb", "a:late", "-q")
    client = LxdClient(str(clean_lab.daemons["a"].dir / "unix.socket"))

    async def late_reader() -> tuple[int, bytes, bytes]:
        process = LxdExec(client, "late", ExecSpec(["sh", "-c", "echo out; echo err >&2"]))
        await process.start()
        try:
            await process.close_stdin()
            code = await process.wait()  # LXD has ended the operation and closed its websockets
            out, err = [], []
            for stream, into in (("1", out), ("2", err)):
                while chunk := await process.read(stream):
                    into.append(chunk)
            return code, b"".join(out), b"".join(err)
        finally:
            await process.close()

    for _ in range(5):
        assert asyncio.run(late_reader()) == (0, b"out\n", b"err\n")
