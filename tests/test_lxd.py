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
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lxd import LxdLab

pytestmark = pytest.mark.skipif(
    not shutil.which("lxd"), reason="lxd is not installed (scripts/test installs it)"
)


@pytest.fixture(scope="module")
def lab(workdir: Path, busybox_image: Path) -> Iterator[LxdLab]:
    """Two LXD daemons, a and b; the busybox image is in a only (b gets it through orch)."""
    with LxdLab(workdir / "lxd", names=("a", "b"), btrfs=True, btrfs_size=1 << 30) as lab:
        lab.lxc("image", "import", str(busybox_image), "a:", "--alias", "bb", "-q")
        yield lab


@pytest.fixture
def clean_lab(lab: LxdLab) -> Iterator[LxdLab]:
    """Every test starts and ends with no containers on either daemon."""
    yield lab
    for remote in lab.daemons:
        for inst in json.loads(lab.lxc("list", f"{remote}:", "--format", "json")):
            lab.lxc("delete", "--force", f"{remote}:{inst['name']}")


def lxd_agent(make_agent, lab: LxdLab, remote: str, name: str, pool: str | None = None):  # type: ignore[no-untyped-def]
    args = ["--runtime", "lxd", "--lxd-socket", str(lab.daemons[remote].dir / "unix.socket")]
    if pool:
        args += ["--lxd-pool", pool]
    return make_agent(name, args=tuple(args))


@pytest.fixture
def lxd_cluster(clean_lab: LxdLab, make_agent, orch_env, start_worker):  # type: ignore[no-untyped-def]
    """Agents la (LXD a) and lb (LXD b) as remotes, a Redis and a worker."""
    la = lxd_agent(make_agent, clean_lab, "a", "la")
    lb = lxd_agent(make_agent, clean_lab, "b", "lb")
    orch_env.add_remote("la", la)
    orch_env.add_remote("lb", lb)
    start_worker("w1")
    return clean_lab


def lxc_json(lab: LxdLab, *args: str) -> object:
    return json.loads(lab.lxc(*args, "--format", "json"))


def instance(lab: LxdLab, remote: str, name: str) -> dict:
    return json.loads(lab.lxc("query", f"{remote}:/1.0/instances/{name}?recursion=1"))


def snapshot_names(lab: LxdLab, remote: str, name: str) -> list[str]:
    snaps = json.loads(lab.lxc("query", f"{remote}:/1.0/instances/{name}/snapshots?recursion=1"))
    return [s["name"] for s in sorted(snaps, key=lambda s: s["created_at"])]


def in_container(lab: LxdLab, remote: str, name: str, script: str) -> str:
    return lab.lxc("exec", f"{remote}:{name}", "--", "sh", "-c", script)


def make_with_snapshots(lab: LxdLab, remote: str = "a", name: str = "c1") -> None:
    """A container with two snapshots, each holding different files, made with lxc itself."""
    lab.lxc("launch", f"{remote}:bb", f"{remote}:{name}", "-q")
    in_container(lab, remote, name, "echo one > /root/a")
    lab.lxc("snapshot", f"{remote}:{name}", "s1")
    in_container(lab, remote, name, "echo two > /root/b; rm /root/a")
    lab.lxc("snapshot", f"{remote}:{name}", "s2")
    in_container(lab, remote, name, "echo three > /root/c")
    lab.lxc("stop", f"{remote}:{name}")


def check_snapshot_content(lab: LxdLab, remote: str, name: str) -> None:
    """Restore each snapshot into a copy and look inside: the files each one had, and only those."""
    lab.lxc("copy", f"{remote}:{name}/s1", f"{remote}:{name}-s1")
    lab.lxc("start", f"{remote}:{name}-s1")
    assert in_container(lab, remote, f"{name}-s1", "cat /root/a; ls /root") == "one\na\n"
    lab.lxc("delete", "--force", f"{remote}:{name}-s1")


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
