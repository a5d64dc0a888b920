"""Local users are unprivileged and curious: as ``nobody``, nothing of an agent's volumes is reachable.

Every kind of volume a native agent keeps — an imported image's unpacked rootfs, an unprivileged and a
privileged container's rootfs, their snapshots, a btrfs export's scratch snapshots — is probed as
``nobody`` (``setpriv --reuid=65534 --regid=65534 --clear-groups``, through a shell, so the probe
itself runs with no privilege): listing, reading and running a setuid-root file planted in each must
fail, while the containers still start and run commands. An agent started on a data dir laid out by an
older version (0711/0755 dirs) tightens it. (Staging dirs during a transfer: tests/test_hostile_source.py;
the LXD runtime's cache and staging: tests/test_lxd.py.)
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
from pathlib import Path

import pytest

from orchapi.client import AgentClient
from tests.procs import AgentProcess, as_nobody

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")


def api(agent: AgentProcess) -> AgentClient:
    return AgentClient(f"unix://{agent.socket}", timeout=120)


def plant_setuid(rootfs: Path, owner: int) -> Path:
    """A setuid copy of busybox owned by ``owner`` (host root, or the container's root)."""
    bait = rootfs / "bin" / "suid-sh"
    shutil.copy2("/bin/busybox", bait)
    os.chown(bait, owner, owner)
    os.chmod(bait, 0o4755)
    return bait


def assert_unreachable(volume: Path, bait: Path) -> None:
    """nobody can neither list the volume, nor read or run anything in it, nor even see it exists."""
    assert volume.is_dir() and bait.stat().st_mode & stat.S_ISUID  # (as root: the bait is real)
    probe = as_nobody(f"ls {volume} ; cat {bait} > /dev/null ; {bait} -c 'id -u' ; {volume}/bin/busybox true")
    assert probe.stdout.strip() == "", probe.stdout  # no listing, no uid printed
    assert probe.stderr.count("Permission denied") >= 3, probe.stderr
    for path in (volume, volume / "bin", bait):
        assert as_nobody(f"test -e {path}").returncode != 0, f"nobody sees {path}"


def exec_ok(agent: AgentProcess, name: str, *command: str) -> str:
    result = api(agent).run("POST", f"/1.0/containers/{name}/exec", json={"command": list(command)})
    assert result["return"] == 0, base64.b64decode(result["stderr"])
    return base64.b64decode(result["stdout"]).decode()


def launch(agent: AgentProcess, name: str, fingerprint: str, privileged: bool = False) -> None:
    config = {"security.privileged": "true"} if privileged else {}
    body = {"name": name, "source": {"fingerprint": fingerprint}, "config": config}
    api(agent).run("POST", "/1.0/containers", json=body)


def import_image(agent: AgentProcess, tarball: Path) -> str:
    result = api(agent).run(
        "POST", "/1.0/images", data=tarball.read_bytes(), headers={"Content-Type": "application/octet-stream"}
    )
    return result["fingerprint"]


@pytest.mark.parametrize("fs", ["dir", "btrfs"])
def test_no_volume_is_reachable_by_local_users(agents, busybox_image, fs):
    agent = agents("a", fs=fs)
    data = agent.data_dir
    fingerprint = import_image(agent, busybox_image)
    launch(agent, "u1", fingerprint)
    launch(agent, "p1", fingerprint, privileged=True)
    for name in ("u1", "p1"):
        api(agent).run("POST", f"/1.0/containers/{name}/snapshots", json={"name": "s1"})

    image = data / "images" / f"{fingerprint}.rootfs"
    volumes = {
        "image": (image, plant_setuid(image, 0)),
        "unprivileged": (data / "containers/u1/rootfs", plant_setuid(data / "containers/u1/rootfs", 100000)),
        "privileged": (data / "containers/p1/rootfs", plant_setuid(data / "containers/p1/rootfs", 0)),
    }
    for name, owner in (("u1", 100000), ("p1", 0)):
        snap = data / f"containers/{name}/snapshots/s1/rootfs"
        # a snapshot is read-only on btrfs: its bait is what the snapshot already holds (busybox itself)
        volumes[f"{name} snapshot"] = (snap, snap / "bin" / "busybox")
        if fs == "dir":
            volumes[f"{name} snapshot"] = (snap, plant_setuid(snap, owner))
    for what, (volume, bait) in volumes.items():
        if not bait.stat().st_mode & stat.S_ISUID:
            assert what.endswith("snapshot") and fs == "btrfs"
            probe = as_nobody(f"ls {volume} ; cat {bait} > /dev/null ; {bait} true")
            assert probe.stdout == "" and probe.stderr.count("Permission denied") >= 3, (what, probe)
            continue
        assert_unreachable(volume, bait)

    # and the containers still work, both kinds, with their dirs this closed
    for name in ("u1", "p1"):
        api(agent).run("PUT", f"/1.0/containers/{name}/state", json={"action": "start"})
        assert exec_ok(agent, name, "id", "-u") == "0\n"
    assert (os.stat(data / "containers/u1").st_mode & 0o777, os.stat(data / "containers/u1").st_gid) == (
        0o710,
        100000,
    )
    assert os.stat(data / "containers/p1").st_mode & 0o777 == 0o700
    for name in ("u1", "p1"):
        api(agent).run("PUT", f"/1.0/containers/{name}/state", json={"action": "stop", "force": True})


def test_an_older_data_dir_is_tightened_at_start(agents, busybox_image):
    agent = agents("a")
    fingerprint = import_image(agent, busybox_image)
    launch(agent, "u1", fingerprint)
    api(agent).run("POST", "/1.0/containers/u1/snapshots", json={"name": "s1"})
    data = agent.data_dir
    agent.stop()
    # what agents before this change made: everything traversable
    for path in (
        data / "containers/u1",
        data / "containers/u1/snapshots",
        data / "containers/u1/snapshots/s1",
    ):
        os.chmod(path, 0o711)
    os.chmod(data / "images", 0o711)
    bait = plant_setuid(data / "containers/u1/rootfs", 100000)
    assert as_nobody(f"test -e {bait}").returncode == 0  # reachable before the restart
    agent.start()
    assert_unreachable(data / "containers/u1/rootfs", bait)
    assert os.stat(data / "containers/u1/snapshots").st_mode & 0o777 == 0o700
    assert os.stat(data / "images").st_mode & 0o777 == 0o700
    api(agent).run("PUT", "/1.0/containers/u1/state", json={"action": "start"})
    assert exec_ok(agent, "u1", "true") == ""
    api(agent).run("PUT", "/1.0/containers/u1/state", json={"action": "stop", "force": True})


def test_toggling_privilege_changes_who_may_pass(agents, busybox_image):
    agent = agents("a")
    fingerprint = import_image(agent, busybox_image)
    launch(agent, "c1", fingerprint)
    cdir = agent.data_dir / "containers/c1"
    assert (os.stat(cdir).st_mode & 0o777, os.stat(cdir).st_gid) == (0o710, 100000)
    api(agent).run("PATCH", "/1.0/containers/c1", json={"config": {"security.privileged": "true"}})
    assert (os.stat(cdir).st_mode & 0o777, os.stat(cdir).st_gid) == (0o700, 0)
    api(agent).run("PATCH", "/1.0/containers/c1", json={"config": {"security.privileged": "false"}})
    assert (os.stat(cdir).st_mode & 0o777, os.stat(cdir).st_gid) == (0o710, 100000)
    api(agent).run("PUT", "/1.0/containers/c1/state", json={"action": "start"})
    assert exec_ok(agent, "c1", "id", "-u") == "0\n"
    api(agent).run("PUT", "/1.0/containers/c1/state", json={"action": "stop", "force": True})
