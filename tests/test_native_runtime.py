"""The native runtime against real runc: no mocks, every container really boots busybox init.

Each test gets its own data dir (so its own runc root and id prefix); teardown kills and deletes every
runc container under it, so nothing outlives a failed test.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.images.store import ImageRecord
from hostagent.runtimes.base import RUNNING, STOPPED
from hostagent.runtimes.idmap import IdMap, default_idmap, shift_into, shift_out_of
from hostagent.runtimes.native import NativeRuntime, halt_signal, resolve_in_root, runc_prefix
from hostagent.runtimes.oci import RLIM_INFINITY_OCI, clamp_rlimits, make_spec
from hostagent.runtimes.runc import summarize
from hostagent.runtimes.runc_exec import EXEC_NOT_EXECUTABLE_CODE, EXEC_NOT_FOUND_CODE, EXEC_TIMEOUT_CODE
from hostagent.storage.btrfs import BtrfsDriver, is_subvolume
from hostagent.storage.dir import DirDriver
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, InternalError, NotFound

pytestmark = pytest.mark.skipif(
    shutil.which("runc") is None or os.geteuid() != 0, reason="needs root and runc"
)

FP = "f" * 64
BASE = 100000


# ---------------------------------------------------------------------------------------------- fixtures


def build_rootfs(root: Path) -> None:
    """A minimal busybox system: busybox, applet symlinks, an inittab without respawn lines."""
    for d in ("bin", "sbin", "etc", "root", "tmp", "proc", "sys", "dev", "run", "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "id", "cat", "echo", "ls", "sleep", "true", "sync", "ps", "stat", "touch"):
        os.symlink("busybox", root / "bin" / applet)
    os.symlink("/bin/busybox", root / "sbin" / "init")
    (root / "etc" / "inittab").write_text("::sysinit:/bin/true\n::shutdown:/bin/sync\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\ntty:x:5:\n")


class FakeImages:
    """Test-only image store: one image whose rootfs is a prepared volume."""

    def __init__(self, rootfs: Path, init: str = "/sbin/init") -> None:
        self._rootfs = rootfs
        self.record = ImageRecord(
            fingerprint=FP,
            size=0,
            filename="busybox.tar.gz",
            uploaded_at="2024-01-01T00:00:00Z",
            created_at="2024-01-01T00:00:00Z",
            architecture="x86_64",
            init=init,
        )

    def get(self, ref: str) -> ImageRecord:
        if ref != FP:
            raise NotFound(f"image {ref} not found")
        return self.record

    def rootfs(self, fingerprint: str) -> Path:
        return self._rootfs


def open_up(path: Path) -> None:
    """chmod 0755 ``path`` and its parents below /tmp: pytest's dirs are 0700 and the mapped root must
    traverse them."""
    path = path.resolve()
    while path != path.parent and str(path).startswith(tempfile.gettempdir() + "/"):
        path.chmod(0o755)
        path = path.parent


def kill_all(runtime: NativeRuntime) -> None:
    """Kill and delete every runc container of this runtime (teardown)."""
    root = str(runtime.runc.root)
    out = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True)
    for cid in out.stdout.split():
        subprocess.run(["runc", "--root", root, "kill", cid, "KILL"], capture_output=True)
        for _ in range(50):
            done = subprocess.run(["runc", "--root", root, "delete", "--force", cid], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def image_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image") / "rootfs"
    build_rootfs(root)
    return root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    open_up(d)
    return d


@pytest.fixture
def runtime(data_dir: Path, image_rootfs: Path) -> Iterator[NativeRuntime]:
    rt = NativeRuntime(data_dir, DirDriver(data_dir), FakeImages(image_rootfs))
    rt.recover()
    yield rt
    kill_all(rt)


@pytest.fixture
def btrfs_runtime(tmp_path: Path, image_rootfs: Path) -> Iterator[NativeRuntime]:
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("btrfs-progs not installed")
    backing, mnt = tmp_path / "btrfs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "512M", str(backing)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(backing)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount btrfs here: {mounted.stderr.strip()}")
    rt = None
    try:
        open_up(mnt)
        storage = BtrfsDriver(mnt)
        (mnt / "images").mkdir()
        image = mnt / "images" / f"{FP}.rootfs"
        storage.clone_volume(image_rootfs, image)  # plain dir source: copied into a fresh subvolume
        rt = NativeRuntime(mnt, storage, FakeImages(image))
        rt.recover()
        yield rt
    finally:
        if rt is not None:
            kill_all(rt)
        subprocess.run(["umount", str(mnt)], capture_output=True)


def host_path(rt: NativeRuntime, name: str, *parts: str) -> Path:
    return rt.container_dir(name).joinpath("rootfs", *parts)


# ---------------------------------------------------------------------------------------------- lifecycle


def test_unprivileged_lifecycle(runtime: NativeRuntime) -> None:
    rec = runtime.create("c1", FP, {})
    assert rec.status == STOPPED and rec.base_image == FP
    assert os.stat(host_path(runtime, "c1")).st_uid == BASE
    assert os.stat(host_path(runtime, "c1", "bin", "busybox")).st_uid == BASE

    runtime.start("c1")
    assert runtime.get("c1").status == RUNNING
    state = runtime.state("c1")
    assert state["status"] == RUNNING and state["status_code"] == 103
    assert state["pid"] > 0 and state["processes"] >= 1
    assert state["disk"]["root"]["usage"] > 0

    res = runtime.exec("c1", ["sh", "-c", "echo hi > /root/x; id -u"], {}, "/", None, 30)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"0\n", b"")
    st = os.stat(host_path(runtime, "c1", "root", "x"))
    assert (st.st_uid, st.st_gid) == (BASE, BASE)
    assert host_path(runtime, "c1", "root", "x").read_text() == "hi\n"

    started = time.monotonic()
    runtime.stop("c1")
    assert time.monotonic() - started < 15, "busybox should halt on SIGPWR, not wait for SIGKILL"
    assert runtime.get("c1").status == STOPPED
    assert runtime.runc.state(runtime.runc_id("c1")) is None

    runtime.start("c1")  # a second boot works, config.json is regenerated
    assert runtime.exec("c1", ["cat", "/root/x"], {}, "/", None, 30).stdout == b"hi\n"
    runtime.stop("c1", force=True)
    runtime.delete("c1")
    with pytest.raises(NotFound):
        runtime.get("c1")
    assert not runtime.container_dir("c1").exists()
    assert runtime.list() == []


def test_delete_aside_frees_the_name_at_once_and_a_restart_finishes_the_removal(
    runtime: NativeRuntime, data_dir: Path, image_rootfs: Path
) -> None:
    runtime.create("c1", FP, {})
    (runtime.container_dir("c1") / "rootfs" / "root" / "data").write_bytes(b"x" * 4096)
    runtime.snapshot_create("c1", "s1")
    remove = runtime.delete_aside("c1")
    # the name is gone before any file is removed: not listed, not found, free for a new container
    with pytest.raises(NotFound):
        runtime.get("c1")
    assert runtime.list() == []
    aside = [p for p in runtime.containers_dir.iterdir() if p.name.startswith(".deleting-c1-")]
    assert len(aside) == 1 and (aside[0] / "rootfs" / "root" / "data").exists()
    runtime.create("c1", FP, {})
    assert runtime.get("c1").snapshots == []
    # the agent dies before the removal ran: the next start removes the files
    again = NativeRuntime(data_dir, DirDriver(data_dir), FakeImages(image_rootfs))
    again.recover()
    assert not aside[0].exists()
    assert again.get("c1").status == STOPPED
    remove()  # a late removal of what is already gone is harmless
    assert again.get("c1").status == STOPPED


def test_privileged_files_owned_by_host_root(runtime: NativeRuntime) -> None:
    runtime.create("priv", FP, {"security.privileged": "true"})
    assert os.stat(host_path(runtime, "priv", "bin", "busybox")).st_uid == 0
    runtime.start("priv")
    res = runtime.exec("priv", ["sh", "-c", "echo p > /root/y; id -u"], {}, "/", None, 30)
    assert res.stdout == b"0\n"
    st = os.stat(host_path(runtime, "priv", "root", "y"))
    assert (st.st_uid, st.st_gid) == (0, 0)
    runtime.stop("priv")
    runtime.delete("priv")


def test_exec_details(runtime: NativeRuntime) -> None:
    runtime.create("ex", FP, {})
    runtime.start("ex")
    res = runtime.exec(
        "ex", ["sh", "-c", 'cat; echo "$FOO" >&2; pwd; exit 7'], {"FOO": "a b"}, "/tmp", b"in\n", 30
    )
    assert (res.returncode, res.stdout, res.stderr) == (7, b"in\n/tmp\n", b"a b\n")
    res = runtime.exec("ex", ["no-such-command"], {}, "/", None, 30)
    assert res.returncode == EXEC_NOT_FOUND_CODE and b"no-such-command" in res.stderr
    assert runtime.exec("ex", ["/etc/passwd"], {}, "/", None, 30).returncode == EXEC_NOT_EXECUTABLE_CODE
    with pytest.raises(BadRequest, match="exec in ex: working directory /nope") as info:
        runtime.exec("ex", ["true"], {}, "/nope", None, 30)
    assert runtime.prefix not in str(info.value)
    started = time.monotonic()
    res = runtime.exec("ex", ["sh", "-c", "echo before; sleep 60"], {}, "/", None, 1)
    assert res.returncode == EXEC_TIMEOUT_CODE and res.stdout == b"before\n"
    assert time.monotonic() - started < 10
    # the killed command is gone from the container
    ps = runtime.exec("ex", ["ps"], {}, "/", None, 30).stdout
    assert b"sleep" not in ps
    runtime.stop("ex", force=True)


def test_conflicts_and_not_found(runtime: NativeRuntime) -> None:
    runtime.create("c2", FP, {})
    with pytest.raises(Conflict, match="already exists"):
        runtime.create("c2", FP, {})
    with pytest.raises(Conflict, match="not running"):
        runtime.exec("c2", ["true"], {}, "/", None, 10)
    with pytest.raises(Conflict, match="not running"):
        runtime.stop("c2")
    runtime.start("c2")
    with pytest.raises(Conflict, match="already running"):
        runtime.start("c2")
    with pytest.raises(Conflict, match="stop it first or use --force"):
        runtime.delete("c2")
    with pytest.raises(Conflict, match="stop it first"):
        runtime.update_config("c2", {"security.privileged": "true"})
    with pytest.raises(NotFound):
        runtime.get("nope")
    with pytest.raises(NotFound):
        runtime.start("nope")
    with pytest.raises(NotFound):
        runtime.create("c3", "0" * 64, {})
    assert not any(p.name.startswith(".creating-") for p in runtime.containers_dir.iterdir())
    runtime.stop("c2", force=True)
    runtime.delete("c2")
    with pytest.raises(NotFound):
        runtime.delete("c2")


def test_start_failure_is_reported_and_cleaned(data_dir: Path, image_rootfs: Path) -> None:
    rt = NativeRuntime(data_dir, DirDriver(data_dir), FakeImages(image_rootfs, init="/bin/missing-init"))
    try:
        rt.create("bad", FP, {})
        with pytest.raises(InternalError, match="failed to start") as info:
            rt.start("bad")
        assert "missing-init" in str(info.value) and rt.prefix not in str(info.value)
        assert rt.get("bad").status == STOPPED
        assert rt.runc.state(rt.runc_id("bad")) is None
        rt.delete("bad")
    finally:
        kill_all(rt)


def test_init_exiting_by_itself_can_be_started_again(runtime: NativeRuntime) -> None:
    runtime.create("selfstop", FP, {})
    runtime.start("selfstop")
    runtime.runc.kill(runtime.runc_id("selfstop"), 9)
    for _ in range(50):
        if runtime.get("selfstop").status == STOPPED:
            break
        time.sleep(0.1)
    assert runtime.get("selfstop").status == STOPPED
    runtime.start("selfstop")  # runc's leftover state must not get in the way
    assert runtime.get("selfstop").status == RUNNING
    runtime.stop("selfstop", force=True)


def test_list_sorted(runtime: NativeRuntime) -> None:
    for name in ("zeta", "alpha", "mid"):
        runtime.create(name, FP, {"user.note": name})
    runtime.start("mid")
    records = runtime.list()
    assert [r.name for r in records] == ["alpha", "mid", "zeta"]
    assert [r.status for r in records] == [STOPPED, RUNNING, STOPPED]
    assert records[0].config == {"user.note": "alpha"}
    runtime.stop("mid", force=True)


# ---------------------------------------------------------------------------------------------- snapshots


def check_snapshots(rt: NativeRuntime, name: str) -> None:
    rt.create(name, FP, {})
    rt.start(name)
    rt.exec(name, ["sh", "-c", "echo one > /root/f"], {}, "/", None, 30)
    snap = rt.snapshot_create(name, "s1")
    assert snap.name == "s1"
    with pytest.raises(Conflict, match="already exists"):
        rt.snapshot_create(name, "s1")
    rt.exec(name, ["sh", "-c", "echo two > /root/f; touch /root/new"], {}, "/", None, 30)
    with pytest.raises(Conflict, match="stop it first"):
        rt.snapshot_restore(name, "s1")
    rt.stop(name)
    assert [s.name for s in rt.get(name).snapshots] == ["s1"]
    snap_root = rt.container_dir(name) / "snapshots" / "s1" / "rootfs"
    assert (snap_root / "root" / "f").read_text() == "one\n"
    assert os.stat(snap_root / "root" / "f").st_uid == BASE

    rt.snapshot_restore(name, "s1")
    assert host_path(rt, name, "root", "f").read_text() == "one\n"
    assert not host_path(rt, name, "root", "new").exists()
    assert os.stat(host_path(rt, name, "root", "f")).st_uid == BASE
    assert not (rt.container_dir(name) / "rootfs.old").exists()
    assert not (rt.container_dir(name) / "rootfs.new").exists()
    rt.start(name)  # the restored rootfs boots
    assert rt.exec(name, ["cat", "/root/f"], {}, "/", None, 30).stdout == b"one\n"
    rt.stop(name, force=True)

    with pytest.raises(NotFound):
        rt.snapshot_restore(name, "nope")
    rt.snapshot_delete(name, "s1")
    assert rt.get(name).snapshots == []
    assert not snap_root.parent.exists()
    with pytest.raises(NotFound):
        rt.snapshot_delete(name, "s1")
    rt.snapshot_create(name, "s2")
    rt.delete(name)  # deleting a container takes its snapshots along
    assert not rt.container_dir(name).exists()


def test_snapshots(runtime: NativeRuntime) -> None:
    check_snapshots(runtime, "snappy")


def test_toggle_privileged_shifts_rootfs_and_snapshots(runtime: NativeRuntime) -> None:
    runtime.create("tog", FP, {})
    runtime.snapshot_create("tog", "before")
    snap_busybox = runtime.container_dir("tog") / "snapshots" / "before" / "rootfs" / "bin" / "busybox"
    assert os.stat(snap_busybox).st_uid == BASE
    rec = runtime.update_config("tog", {"security.privileged": "true", "user.x": "1"})
    assert rec.config == {"security.privileged": "true", "user.x": "1"}
    assert os.stat(host_path(runtime, "tog", "bin", "busybox")).st_uid == 0
    assert os.stat(snap_busybox).st_uid == 0
    runtime.start("tog")
    assert runtime.exec("tog", ["id", "-u"], {}, "/", None, 30).stdout == b"0\n"
    runtime.stop("tog", force=True)
    runtime.update_config("tog", {})
    assert os.stat(host_path(runtime, "tog", "bin", "busybox")).st_uid == BASE
    assert os.stat(snap_busybox).st_uid == BASE
    runtime.start("tog")
    runtime.stop("tog", force=True)


# ---------------------------------------------------------------------------------------------- recovery


def test_recover_keeps_running_containers_and_cleans_debris(
    runtime: NativeRuntime, data_dir: Path, image_rootfs: Path
) -> None:
    runtime.create("keep", FP, {})
    runtime.start("keep")
    runtime.create("idle", FP, {})
    leftover = runtime.containers_dir / ".creating-x-deadbeef"
    (leftover / "rootfs").mkdir(parents=True)
    deleting = runtime.containers_dir / ".deleting-y-deadbeef"
    deleting.mkdir()
    # an interrupted restore: rootfs renamed away, replacement not yet in place
    idle = runtime.container_dir("idle")
    os.rename(idle / "rootfs", idle / "rootfs.old")
    (idle / "rootfs.new").mkdir()
    (idle / "snapshots" / "half-made").mkdir()

    again = NativeRuntime(data_dir, DirDriver(data_dir), FakeImages(image_rootfs))
    again.recover()
    assert not leftover.exists() and not deleting.exists()
    assert (idle / "rootfs" / "bin" / "busybox").exists()
    assert not (idle / "rootfs.old").exists() and not (idle / "rootfs.new").exists()
    assert not (idle / "snapshots" / "half-made").exists()
    assert again.get("keep").status == RUNNING
    assert again.get("idle").status == STOPPED
    assert again.exec("keep", ["true"], {}, "/", None, 30).returncode == 0
    again.stop("keep")
    assert again.get("keep").status == STOPPED


def test_recover_forgets_containers_that_stopped_meanwhile(runtime: NativeRuntime, data_dir: Path) -> None:
    runtime.create("gone", FP, {})
    runtime.start("gone")
    runtime.runc.kill(runtime.runc_id("gone"), 9)
    time.sleep(0.5)
    runtime.recover()
    assert runtime.runc.state(runtime.runc_id("gone")) is None
    assert runtime.get("gone").status == STOPPED
    assert '"status": "Stopped"' in (runtime.container_dir("gone") / "container.json").read_text()


def test_two_agents_never_share_runc_ids(tmp_path: Path) -> None:
    assert runc_prefix(tmp_path / "a") != runc_prefix(tmp_path / "b")
    assert runc_prefix(tmp_path / "a").startswith("orch-")


# ---------------------------------------------------------------------------------------------- btrfs


def test_btrfs_volumes_are_subvolumes(btrfs_runtime: NativeRuntime) -> None:
    rt = btrfs_runtime
    assert rt.storage_name == "btrfs" and rt.transfer_methods[0] == "btrfs"
    rt.create("b1", FP, {})
    rootfs = rt.container_dir("b1") / "rootfs"
    assert is_subvolume(rootfs)
    subprocess.run(["btrfs", "subvolume", "show", str(rootfs)], check=True, capture_output=True)
    assert os.stat(rootfs / "bin" / "busybox").st_uid == BASE
    rt.start("b1")
    res = rt.exec("b1", ["sh", "-c", "echo hi > /root/x; id -u"], {}, "/", None, 30)
    assert res.stdout == b"0\n"
    assert os.stat(rootfs / "root" / "x").st_uid == BASE
    rt.snapshot_create("b1", "s")
    snap = rt.container_dir("b1") / "snapshots" / "s" / "rootfs"
    shown = subprocess.run(
        ["btrfs", "subvolume", "show", str(snap)], check=True, capture_output=True, text=True
    )
    assert "readonly" in shown.stdout.split("Flags:")[1].splitlines()[0]
    rt.stop("b1")
    rt.snapshot_restore("b1", "s")
    assert is_subvolume(rootfs)
    rt.delete("b1")
    assert not rt.container_dir("b1").exists()
    listing = subprocess.run(
        ["btrfs", "subvolume", "list", str(rt.data_dir)], check=True, capture_output=True, text=True
    )
    assert "containers/" not in listing.stdout


def test_btrfs_full_lifecycle_and_snapshots(btrfs_runtime: NativeRuntime) -> None:
    check_snapshots(btrfs_runtime, "bsnap")
    btrfs_runtime.create("bpriv", FP, {"security.privileged": "true"})
    btrfs_runtime.snapshot_create("bpriv", "s")
    btrfs_runtime.update_config("bpriv", {})  # read-only snapshot gets re-made shifted
    snap = btrfs_runtime.container_dir("bpriv") / "snapshots" / "s" / "rootfs"
    assert os.stat(snap / "bin" / "busybox").st_uid == BASE and is_subvolume(snap)
    btrfs_runtime.start("bpriv")
    btrfs_runtime.stop("bpriv", force=True)
    btrfs_runtime.delete("bpriv")


def test_btrfs_driver_deletes_readonly_and_nested(btrfs_runtime: NativeRuntime) -> None:
    storage = btrfs_runtime.storage
    base = btrfs_runtime.data_dir
    storage.create_volume(base / "v")
    (base / "v" / "file").write_text("x")
    storage.snapshot_volume(base / "v", base / "ro")
    with pytest.raises(OSError):
        (base / "ro" / "other").write_text("y")
    storage.clone_volume(base / "ro", base / "rw")
    (base / "rw" / "other").write_text("y")
    subprocess.run(
        ["btrfs", "subvolume", "create", str(base / "rw" / "nested")], check=True, capture_output=True
    )
    for vol in ("v", "ro", "rw"):
        storage.delete_volume(base / vol)
        assert not (base / vol).exists()
    storage.delete_volume(base / "missing")  # idempotent


# ---------------------------------------------------------------------------------------------- units


def test_dir_driver_copy_preserves_and_maps_enospc(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    os.link(src / "a", src / "hard")
    os.chown(src / "a", 1234, 5678)
    (src / "a").chmod(0o4755)  # after chown, which clears setuid
    drv = DirDriver(tmp_path)
    drv.clone_volume(src, tmp_path / "copy")
    st = os.stat(tmp_path / "copy" / "a")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_nlink) == (1234, 5678, 0o4755, 2)
    with pytest.raises(Conflict):
        drv.clone_volume(src, tmp_path / "copy")
    drv.delete_volume(tmp_path / "copy")
    drv.delete_volume(tmp_path / "copy")

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount tmpfs")
    try:
        (src / "big").write_bytes(os.urandom(2 * 1024 * 1024))
        with pytest.raises(InsufficientStorage):
            drv.clone_volume(src, small / "copy")
        assert not (small / "copy").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_shift_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "suid").write_text("x")
    (root / "suid").chmod(0o6755)
    os.link(root / "suid", root / "hardlink")
    os.symlink("/etc/passwd", root / "link")  # must not be followed
    (root / "sub").mkdir()
    os.chown(root / "sub", 5, 6)
    caps = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, cap_net_raw
    os.setxattr(root / "suid", "security.capability", caps)
    passwd_owner = os.stat("/etc/passwd").st_uid

    idmap = IdMap(BASE, 65536)
    shift_into(root, idmap)
    st = os.stat(root / "suid")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (BASE, BASE, 0o6755)
    assert os.lstat(root / "link").st_uid == BASE and os.stat("/etc/passwd").st_uid == passwd_owner
    assert (os.stat(root / "sub").st_uid, os.stat(root / "sub").st_gid) == (BASE + 5, BASE + 6)
    shifted = os.getxattr(root / "suid", "security.capability")
    assert shifted[:4] == struct.pack("<I", 0x03000001) and shifted[20:24] == struct.pack("<I", BASE)

    shift_out_of(root, idmap)
    assert os.stat(root / "suid").st_uid == 0 and os.stat(root / "sub").st_gid == 6
    assert os.stat(root / "suid").st_mode & 0o7777 == 0o6755
    assert os.getxattr(root / "suid", "security.capability") == caps

    os.chown(root / "sub", 70000, 0)
    with pytest.raises(BadRequest, match="outside"):
        shift_into(root, idmap)
    assert os.stat(root / "suid").st_uid == 0  # refused before anything changed


def test_default_idmap(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert default_idmap(missing, missing) == IdMap(100000, 65536)
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\nroot:200000:1000000\n")
    subgid.write_text("root:300000:65536\n")
    m = default_idmap(subuid, subgid)
    assert (m.host_base, m.size, m.gid_host_base) == (200000, 65536, 300000)
    subgid.write_text("root:300000:1000\n")
    with pytest.raises(InternalError, match="too small"):
        default_idmap(subuid, subgid)


def test_spec_shape(tmp_path: Path) -> None:
    unpriv = make_spec(tmp_path, "h", ["/sbin/init"], IdMap(BASE, 65536))
    priv = make_spec(tmp_path, "h", ["/sbin/init"], None)
    assert unpriv["linux"]["uidMappings"] == [{"containerID": 0, "hostID": BASE, "size": 65536}]
    assert "user" in [n["type"] for n in unpriv["linux"]["namespaces"]]
    assert "user" not in [n["type"] for n in priv["linux"]["namespaces"]]
    assert not any(m["destination"].startswith("/sys/fs/cgroup") for m in unpriv["mounts"])
    assert unpriv["process"]["terminal"] is False and unpriv["root"]["readonly"] is False
    assert "CAP_SYS_MODULE" not in unpriv["process"]["capabilities"]["bounding"]
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (nofile,) = clamp_rlimits({"RLIMIT_NOFILE": (10**9, 10**9)})
    assert nofile["hard"] == (RLIM_INFINITY_OCI if hard == resource.RLIM_INFINITY else hard)


def test_halt_signal_resolves_inside_rootfs(tmp_path: Path) -> None:
    import signal

    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "bin" / "busybox").write_text("")
    os.symlink("../../../../bin/busybox", root / "sbin" / "init")  # '..' stops at the rootfs root
    assert resolve_in_root(root, "/sbin/init") == root / "bin" / "busybox"
    assert halt_signal(root, "/sbin/init") == signal.SIGPWR
    os.symlink("/usr/lib/systemd/systemd", root / "sbin" / "sd")
    assert halt_signal(root, "/sbin/sd") == signal.SIGRTMIN + 3
    os.symlink("loop", root / "loop")
    assert resolve_in_root(root, "/loop") is None
    assert halt_signal(root, "/bin/other") == signal.SIGTERM


def test_summarize_runc_errors() -> None:
    text = 'time="x" level=warning msg="w"\ntime="y" level=error msg="runc run failed: \\"bad\\" thing"\n'
    assert summarize(text) == 'runc run failed: "bad" thing'
    assert summarize('{"level":"error","msg":"container does not exist","time":"t"}\n') == (
        "container does not exist"
    )
    assert summarize("") == "no error output"


SUBREAPER_SCRIPT = """
import os, sys, time
from pathlib import Path
from hostagent.runtimes.runc import become_subreaper
from hostagent.runtimes.native import NativeRuntime
from hostagent.storage.dir import DirDriver
from tests.test_native_runtime import FP, FakeImages

data, image = Path(sys.argv[1]), Path(sys.argv[2])
assert become_subreaper()
rt = NativeRuntime(data, DirDriver(data), FakeImages(image))
rt.create("z", FP, {})
rt.start("z")
first = rt.get("z").pid
assert int(Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
rt.runc.kill(rt.runc_id("z"), 9)  # init dies on its own: a zombie child of ours
time.sleep(0.5)
rt.start("z")  # clears runc's leftovers and reaps the dead init
second = rt.get("z").pid
rt.stop("z")
rt.delete("z")
zombies = [p for p in (first, second) if Path(f"/proc/{p}").exists()]
print("zombies", zombies)
sys.exit(1 if zombies else 0)
"""


def test_subreaper_agent_leaves_no_zombies(data_dir: Path, image_rootfs: Path) -> None:
    """With PR_SET_CHILD_SUBREAPER, inits are reparented to the agent, which must reap them itself."""
    repo = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SUBREAPER_SCRIPT, str(data_dir), str(image_rootfs)],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        out = subprocess.run(
            ["runc", "--root", str(data_dir / "runc"), "list", "-q"], capture_output=True, text=True
        )
        for cid in out.stdout.split():
            subprocess.run(
                ["runc", "--root", str(data_dir / "runc"), "delete", "--force", cid], capture_output=True
            )
    assert proc.returncode == 0, proc.stdout + proc.stderr
