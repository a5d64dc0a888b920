"""A compromised source agent attacks a real target agent through the migration protocol, and is refused.

The source is tests/hostile_peer.py (real TLS, the real rsync/tar/btrfs senders over trees crafted as
root, or raw bytes); the target is a real ``orch-agent`` asked to pull through its API, as the worker
would. Each attack checks that the pull fails with a clear 4xx naming what was refused, that no
container appeared, and that nothing was left on the target — no staging dir, and no file anywhere in its
data dir that was not there before.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent import filecaps
from orchapi.client import AgentClient
from orchapi.errors import BadRequest, Forbidden, OrchError
from tests import hostile_peer as hp
from tests.procs import AgentProcess, as_nobody

ROOT = 100000  # the container root's host uid in the default map
MiB = 1 << 20


def api(agent: AgentProcess) -> AgentClient:
    return AgentClient(f"unix://{agent.socket}", timeout=120)


@pytest.fixture
def peer(tmpdir755: Path) -> Iterator[hp.HostilePeer]:
    with hp.HostilePeer(tmpdir755 / "peer") as p:
        yield p


def files_of(agent: AgentProcess) -> set[str]:
    """Every path in the agent's data dir but its own bookkeeping (logs, runc's and exec's state)."""
    out = set()
    skip = {"runc", "run", "listen.addr", "unix.socket"}
    for root, dirs, files in os.walk(agent.data_dir):
        rel = os.path.relpath(root, agent.data_dir)
        if rel.split("/")[0] in skip:
            continue
        out.update(os.path.join(rel, n) for n in dirs + files if rel != "." or n not in skip)
    return out


def pull(agent: AgentProcess, peer: hp.HostilePeer, name: str = "evil", **over) -> dict:  # type: ignore[no-untyped-def]
    response = api(agent).request("POST", "/1.0/containers", json=peer.pull_body(name, **over))
    result = api(agent).wait(response.json()["operation"])
    peer.finished.wait(10)
    return result


def refused(agent: AgentProcess, peer: hp.HostilePeer, error: type[OrchError], match: str, **over) -> str:  # type: ignore[no-untyped-def]
    """The pull fails with ``error`` matching ``match``; nothing appeared, nothing was left behind."""
    before = files_of(agent)
    with pytest.raises(error, match=match) as caught:
        pull(agent, peer, **over)
    assert [c["name"] for c in api(agent).get("/1.0/containers", params={"recursion": 1})] == []
    deadline = time.monotonic() + 5
    while (left := files_of(agent) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == set(), f"left behind on the target: {sorted(left)}"
    return str(caught.value)


def tree(path: Path, uid: int = ROOT) -> Path:
    """A small container tree owned by the container's root, as the source would hold it."""
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "tool").write_bytes(b"\x7fELF" + os.urandom(1000))
    for p in (path, path / "bin", path / "bin" / "tool"):
        os.chown(p, uid, uid)
    return path


def script(volume_of, **header_over):  # type: ignore[no-untyped-def]
    """A script: send the header for ``volume_of()``'s (path, declaration), then that one volume."""

    header_over.setdefault("methods", [getattr(volume_of, "method", "tar")])

    async def run(ch):  # type: ignore[no-untyped-def]
        send, declaration = volume_of()
        accept = await hp.send_header(ch, hp.header([declaration], **header_over))
        await send(ch, accept)
        await ch.recv("done")

    return run


def by_method(method: str, path: Path, declaration: dict | None = None, features=None, link=None,  # type: ignore[no-untyped-def]
              compression: str = ""):  # fmt: skip
    """A volume sent by the real sender of ``method``; ``link``: over the peer's data port;
    ``compression``: the stream compressed so (whatever the target accepted)."""

    def volume_of():  # type: ignore[no-untyped-def]
        async def send(ch, accept):  # type: ignore[no-untyped-def]
            wanted = features if features is not None else frozenset(accept.get("features") or [])
            offer = link if accept.get("link") else None
            await hp.send_with_method(
                ch, method, path, frozenset(wanted), link=offer, compression=compression
            )

        return send, declaration or hp.declared(path)

    volume_of.method = method  # type: ignore[attr-defined]
    return volume_of


def by_tar_bytes(data: bytes, declaration: dict, pace: float = 0.0, expected: Path | None = None):  # type: ignore[no-untyped-def]
    """Raw tar bytes; ``expected`` is a tree equal to what they make (for the manifest digest)."""

    def volume_of():  # type: ignore[no-untyped-def]
        async def send(ch, accept):  # type: ignore[no-untyped-def]
            await hp.send_tar_bytes(ch, data, pace=pace)
            await hp.finish_volume(ch, 0, expected)

        return send, declaration

    return volume_of


def tar_in_order(src: Path, names: list[str]) -> bytes:
    """A tar of ``src``'s entries in the order given (GNU tar's order is the directory's)."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(src / name, arcname=name, recursive=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- privilege


def test_the_source_cannot_make_its_copy_privileged(agents, peer, tmpdir755):
    """security.privileged=true with raw ids, device nodes and a setuid-root file: refused before any byte
    moves unless the operator opts in for the job (or the host), and then the copy is privileged."""
    target = agents("t")
    src = tmpdir755 / "priv"
    tree(src, uid=0)
    os.mknod(src / "bin" / "disk", stat.S_IFBLK | 0o666, os.makedev(7, 0))
    os.chmod(src / "bin" / "tool", 0o4755)
    privileged = {"security.privileged": "true"}
    container = {**hp.header([])["container"], "config": privileged}
    peer.script = script(by_method("tar", src), container=container, idmap=None)
    message = refused(
        target, peer, Forbidden, "does not accept a migrated container with security.privileged"
    )
    assert "--allow-privileged" in message and "migration.allow_privileged" in message
    assert peer.errors  # the source was told and stopped

    peer.errors.clear()
    peer.script = script(by_method("tar", src), container=container, idmap=None)
    result = pull(target, peer, allow_privileged=True)
    assert result["verified"] is True and not peer.errors
    got = api(target).get("/1.0/containers/evil")
    assert got["config"]["security.privileged"] == "true"
    disk = target.data_dir / "containers/evil/rootfs/bin/disk"
    assert (
        stat.S_ISBLK(os.lstat(disk).st_mode)
        and os.lstat(target.data_dir / "containers/evil/rootfs/bin/tool").st_uid == 0
    )


def test_the_hosts_own_policy_can_allow_privileged_copies(agents, peer, tmpdir755):
    target = agents("t")
    src = tree(tmpdir755 / "priv", uid=0)
    container = {**hp.header([])["container"], "config": {"security.privileged": "true"}}
    api(target).run("PATCH", "/1.0", json={"config": {"migration.allow_privileged": "true"}})
    peer.script = script(by_method("tar", src), container=container, idmap=None)
    assert pull(target, peer)["verified"] is True


@pytest.mark.parametrize(
    ("config", "instance", "named"),
    [
        ({"raw.lxc": "lxc.apparmor.profile=unconfined"}, None, "raw.lxc"),
        ({"security.idmap.base": "0"}, None, "security.idmap.base"),
        ({"linux.kernel_modules": "ip_tables"}, None, "linux.kernel_modules"),
        ({"security.nesting": "true"}, None, "security.nesting"),
        ({}, {"devices": {"d": {"type": "unix-char", "path": "/dev/mem"}}}, "device d (unix-char)"),
        ({}, {"devices": {"h": {"type": "disk", "source": "/", "path": "/host"}}}, "device h (disk /)"),
        ({}, {"snapshots": [{"name": "s", "config": {"raw.idmap": "both 0 0"}}]}, "snapshot s: raw.idmap"),
    ],
)
def test_elevated_config_and_devices_are_refused(agents, peer, tmpdir755, config, instance, named):
    target = agents("t")
    src = tree(tmpdir755 / "src")
    container = {**hp.header([])["container"], "config": config}
    peer.script = script(by_method("tar", src), container=container, instance=instance)
    assert named in refused(target, peer, Forbidden, "does not accept a migrated container with")


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"idmap": {"host_base": 0, "size": 65536}}, "host's own ids"),
        ({"idmap": {"host_base": 1000, "size": 65536}}, "host's own ids"),
        (
            {"container": {**hp.header([])["container"], "config": {"security.privileged": "true"}}},
            "an id map for a privileged container",
        ),
    ],
)
def test_id_maps_that_would_make_files_the_hosts_are_refused(agents, peer, tmpdir755, over, match):
    target = agents("t")
    peer.script = script(by_method("tar", tree(tmpdir755 / "src")), **over)
    refused(target, peer, BadRequest, match, allow_privileged=True)


# --------------------------------------------------------------------- what a volume may hold


@pytest.mark.parametrize("method", ["tar", "rsync"])
def test_host_file_capabilities_are_refused(agents, peer, tmpdir755, method):
    """A v2 (initial namespace) capability would give nobody cap_dac_read_search on the host."""
    target = agents("t")
    src = tree(tmpdir755 / "src")
    os.setxattr(src / "bin" / "tool", "security.capability", filecaps.granting(1 << 2))
    peer.script = script(by_method(method, src))
    refused(target, peer, BadRequest, "host-level \\(v2\\) file capability")


@pytest.mark.parametrize("method", ["tar", "rsync"])
def test_the_containers_own_capabilities_travel(agents, peer, tmpdir755, method):
    target = agents("t")
    src = tree(tmpdir755 / "src")
    os.setxattr(src / "bin" / "tool", "security.capability", filecaps.granting(1 << 2, ROOT))
    peer.script = script(by_method(method, src))
    assert pull(target, peer)["verified"] is True, peer.errors
    tool = target.data_dir / "containers/evil/rootfs/bin/tool"
    assert os.getxattr(tool, "security.capability") == filecaps.granting(1 << 2, ROOT)


def test_rsync_device_nodes_are_refused_at_receipt(agents, peer, tmpdir755):
    """An rsync client asking the server to make device nodes (-D) is refused before rsync runs."""
    target = agents("t")
    src = tree(tmpdir755 / "src")
    os.mknod(src / "bin" / "mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    os.chown(src / "bin" / "mem", ROOT, ROOT)
    peer.script = script(by_method("rsync", src, features=frozenset({"devices", "xattrs"})))
    refused(target, peer, BadRequest, r"asks for device nodes \(-D\), and the container is unprivileged")


def test_tar_device_nodes_and_foreign_owners_are_refused_at_receipt(agents, peer, tmpdir755):
    target = agents("t")
    src = tree(tmpdir755 / "src")
    os.mknod(src / "bin" / "mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    os.chown(src / "bin" / "mem", ROOT, ROOT)
    peer.script = script(by_method("tar", src))
    refused(target, peer, BadRequest, "device node")
    os.unlink(src / "bin" / "mem")
    os.chown(src / "bin" / "tool", 0, 0)
    os.chmod(src / "bin" / "tool", 0o4755)
    peer.script = script(by_method("tar", src))
    refused(target, peer, BadRequest, "outside the container's ids")


def test_rsync_foreign_owners_are_refused(agents, peer, tmpdir755):
    target = agents("t")
    src = tree(tmpdir755 / "src")
    os.chown(src / "bin" / "tool", 0, 0)
    os.chmod(src / "bin" / "tool", 0o4755)
    peer.script = script(by_method("rsync", src))
    refused(target, peer, BadRequest, "owned by 0:0, outside the container's id range")


# ------------------------------------------------------------------------------------ sizes


def link_of(peer: hp.HostilePeer, target: AgentProcess, over_link: bool) -> dict:  # type: ignore[type-arg]
    """Script arguments that send the volume over the peer's data port (or not)."""
    if not over_link:
        return {}
    return {"link": peer.offers((target.data_dir / "server.crt").read_text())}


def header_link(peer: hp.HostilePeer, over_link: bool) -> dict:  # type: ignore[type-arg]
    return {"link": {"port": peer.datalink.port}} if over_link else {}


@pytest.mark.parametrize("over_link", [False, True], ids=["websocket", "link"])
@pytest.mark.parametrize("method", ["tar", "rsync"])
def test_a_volume_larger_than_declared_is_refused(agents, peer, tmpdir755, method, over_link):
    """Declared as 0 bytes, sent as 20 MiB: the target stops at its allowance (declared + a margin),
    whether the bytes come over the websocket or the data link."""
    target = agents("t")
    src = tree(tmpdir755 / "src")
    (src / "big").write_bytes(os.urandom(20 * MiB))
    os.chown(src / "big", ROOT, ROOT)
    lie = {"snapshot": None, "size": 0, "entries": 4}
    volume = by_method(method, src, declaration=lie, **link_of(peer, target, over_link))
    peer.script = script(volume, **header_link(peer, over_link))
    message = refused(target, peer, BadRequest, "more than")
    assert "declared" in message


def test_a_tiny_tar_stream_cannot_make_a_huge_allocated_file(agents, peer, tmpdir755):
    """A sparse member of 1 GiB apparent size in a few KiB: its holes stay holes."""
    target = agents("t")
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = hp.member(".", tarfile.DIRTYPE)
        tar.addfile(root)
        sparse = hp.member("holes")
        sparse.size = 4
        sparse.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": "holes",
            "GNU.sparse.realsize": str(1 << 30),
        }
        # pax 1.0 sparse data: the map (entries, offset, size) padded to a block, then the data
        sparse_map = b"1\n1073741820\n4\n".ljust(512, b"\0")
        sparse.size = len(sparse_map) + 4
        tar.addfile(sparse, io.BytesIO(sparse_map + b"DATA"))
    data = buf.getvalue()
    assert len(data) < 16 * 1024
    expected = tmpdir755 / "expected"  # what the stream makes, for the manifest the source sends
    expected.mkdir()
    with open(expected / "holes", "wb") as fh:
        fh.truncate(1 << 30)
        fh.seek((1 << 30) - 4)
        fh.write(b"DATA")
    for path, mode in ((expected, 0o755), (expected / "holes", 0o644)):
        os.chown(path, ROOT, ROOT)
        os.chmod(path, mode)
        os.utime(path, (0, 0))
    declaration = {"snapshot": None, "size": 8192, "entries": 2}
    peer.script = script(by_tar_bytes(data, declaration, expected=expected))
    try:
        pull(target, peer)
    except BadRequest as exc:  # refusing it is as good as writing it sparse
        assert "holes" in str(exc) or "apparent" in str(exc), exc
        return
    holes = target.data_dir / "containers/evil/rootfs/holes"
    st = os.stat(holes)
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < MiB
    with open(holes, "rb") as fh:
        fh.seek((1 << 30) - 4)
        assert fh.read() == b"DATA"


# --------------------------------------------------------------- nothing reachable meanwhile


def test_staging_is_closed_to_local_users_from_the_first_byte(agents, peer, tmpdir755):
    """During a deliberately slow transfer of a privileged container with a setuid-root file, nobody
    cannot list, read or run anything of the staging dir (whose path a local user can learn)."""
    target = agents("t")
    src = tree(tmpdir755 / "src", uid=0)
    busybox = Path("/bin/busybox")
    (src / "bin" / "sh").write_bytes(busybox.read_bytes())
    os.chmod(src / "bin" / "sh", 0o4755)
    (src / "pad").write_bytes(os.urandom(4 * MiB))
    container = {**hp.header([])["container"], "config": {"security.privileged": "true"}}
    data = tar_in_order(src, [".", "bin", "bin/sh", "bin/tool", "pad"])  # the bait first, then slowly
    peer.script = script(
        by_tar_bytes(data, hp.declared(src), pace=0.05, expected=src), container=container, idmap=None
    )
    response = api(target).request(
        "POST", "/1.0/containers", json=peer.pull_body("evil", allow_privileged=True)
    )
    operation = response.json()["operation"]
    staged: Path | None = None
    deadline = time.monotonic() + 30
    while staged is None:  # the bait is in place, setuid root, while the rest still trickles in
        assert time.monotonic() < deadline, "the staged setuid file never appeared"
        for entry in (target.data_dir / "containers").glob(".creating-*"):
            candidate = entry / "rootfs" / "bin" / "sh"
            if candidate.exists() and os.stat(candidate).st_mode & stat.S_ISUID:
                staged = candidate
        time.sleep(0.02)
    assert os.stat(staged).st_uid == 0 and api(target).get(operation)["status"] == "Running"
    probe = as_nobody(f"ls {staged.parents[2]}; cat {staged} >/dev/null; {staged} -c 'id -u'")
    assert "Permission denied" in probe.stderr and "0\n" not in probe.stdout, probe
    for path in (staged.parents[1], staged.parents[0], staged):  # the staging dir's name is all it sees
        assert as_nobody(f"test -e {path}").returncode != 0, path
    assert api(target).wait(operation)["verified"] is True


# ------------------------------------------------------------------------------------------ btrfs


@pytest.fixture
def btrfs_tree(tmpdir755: Path) -> Iterator:  # type: ignore[type-arg]
    """Factory for read-only subvolumes named ``rootfs`` on a loop-mounted btrfs of the peer's own."""
    image, mount = tmpdir755 / "peer.btrfs", tmpdir755 / "peerfs"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "512M", str(image)], check=True)
    if subprocess.run(["mkfs.btrfs", "-q", str(image)], capture_output=True).returncode != 0:
        pytest.skip("mkfs.btrfs failed")
    if subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a loop-mounted btrfs here")
    made: list[Path] = []

    def make(fill) -> Path:  # type: ignore[no-untyped-def]
        parent = mount / f"v{len(made)}"
        parent.mkdir()
        path = parent / "rootfs"
        subprocess.run(["btrfs", "subvolume", "create", str(path)], check=True, capture_output=True)
        tree(path)
        fill(path)
        subprocess.run(["btrfs", "property", "set", "-ts", str(path), "ro", "true"], check=True)
        made.append(path)
        return path

    yield make
    subprocess.run(["umount", str(mount)], capture_output=True)


def _device(path: Path) -> None:
    os.mknod(path / "bin" / "mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    os.chown(path / "bin" / "mem", ROOT, ROOT)


def _host_cap(path: Path) -> None:
    os.setxattr(path / "bin" / "tool", "security.capability", filecaps.granting(1 << 2))


def _root_owned(path: Path) -> None:
    os.chown(path / "bin" / "tool", 0, 0)
    os.chmod(path / "bin" / "tool", 0o4755)


@pytest.mark.parametrize("over_link", [False, True], ids=["websocket", "link"])
@pytest.mark.parametrize(
    ("fill", "match"),
    [
        (_device, "is a device node, and the container is unprivileged"),  # (named as btrfs names it)
        (_host_cap, r"host-level \(v2\) file capability"),
        (_root_owned, "would be owned by 0:0, outside the container's ids"),
    ],
)
def test_btrfs_streams_are_checked_as_they_arrive(agents, peer, btrfs_tree, fill, match, over_link):
    target = agents("t", fs="btrfs")
    source = btrfs_tree(fill)
    volume = by_method("btrfs", source, features=frozenset(), **link_of(peer, target, over_link))
    peer.script = script(volume, **header_link(peer, over_link))
    assert "refusing the btrfs stream of rootfs" in refused(target, peer, BadRequest, match)


def test_btrfs_volume_larger_than_declared_and_honest_capabilities(agents, peer, btrfs_tree):
    target = agents("t", fs="btrfs")

    def big(path: Path) -> None:
        (path / "big").write_bytes(os.urandom(20 * MiB))
        os.chown(path / "big", ROOT, ROOT)

    lie = {"snapshot": None, "size": 0, "entries": 4}
    peer.script = script(by_method("btrfs", btrfs_tree(big), declaration=lie, features=frozenset()))
    refused(target, peer, BadRequest, "more than it declared")

    def own_cap(path: Path) -> None:
        os.setxattr(path / "bin" / "tool", "security.capability", filecaps.granting(1 << 2, ROOT))

    peer.errors.clear()
    peer.script = script(by_method("btrfs", btrfs_tree(own_cap), features=frozenset()))
    assert pull(target, peer)["verified"] is True, peer.errors
    tool = target.data_dir / "containers/evil/rootfs/bin/tool"
    assert os.getxattr(tool, "security.capability") == filecaps.granting(1 << 2, ROOT)


@pytest.mark.parametrize("over_link", [False, True], ids=["websocket", "link"])
@pytest.mark.parametrize("method", ["tar", "btrfs"])
def test_a_compressed_stream_cannot_bring_more_than_declared(agents, peer, tmpdir755, btrfs_tree, method,
                                                             over_link):  # fmt: skip
    """A zstd bomb: 64 MiB in a few KiB of compressed stream, declared as nothing. The target counts
    what it decompresses against the allowance, not what came over the wire."""

    def bomb(path: Path) -> None:
        (path / "bomb").write_bytes(b"A" * (64 * MiB))
        os.chown(path / "bomb", ROOT, ROOT)

    if method == "btrfs":
        target, src = agents("t", fs="btrfs"), btrfs_tree(bomb)
    else:
        target, src = agents("t"), tree(tmpdir755 / "src")
        bomb(src)
    lie = {"snapshot": None, "size": 0, "entries": 4}
    volume = by_method(method, src, declaration=lie, features=frozenset(), compression="zstd",
                       **link_of(peer, target, over_link))  # fmt: skip
    peer.script = script(volume, features=["xattrs", "acls", "zstd"], **header_link(peer, over_link))
    message = refused(target, peer, BadRequest, "more than", compression="zstd")
    assert "declared" in message or "written" in message


# ------------------------------------------------------------------------------ base images


@pytest.mark.parametrize("declared", [1 << 40, 10**13], ids=["1TiB", "1e13"])
def test_a_base_image_bomb_from_a_source_is_refused_at_once(agents, peer, tmpdir755, declared):
    """The same tiny image declaring a huge member, pulled from a malicious source as a base image."""
    from tests.test_images_cli import _tiny_image_declaring

    target = agents("t")
    bomb = _tiny_image_declaring(tmpdir755 / "bomb.tar.gz", declared).read_bytes()
    before = files_of(target)
    started = time.monotonic()
    with pytest.raises(BadRequest, match="image member 'rootfs/big' declares"):
        api(target).run("POST", "/1.0/images", json=peer.image_pull_body(bomb))
    assert time.monotonic() - started < 5
    assert api(target).get("/1.0/images") == [] and files_of(target) - before == set()
