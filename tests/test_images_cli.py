"""Image import through the CLI and a real agent: hostile, corrupt and too-big archives leave nothing."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.procs import as_nobody
from tests.test_image_tarball import METADATA, dir_, reg, sym, write_tar


def _leftovers(agent) -> list[str]:  # type: ignore[no-untyped-def]
    images = agent.data_dir / "images"
    kept = ("tmp", "aliases.json")
    return sorted(p for p in os.listdir(images) if p not in kept) + sorted(os.listdir(images / "tmp"))


def _meta() -> tuple[tarfile.TarInfo, bytes]:
    return reg("metadata.yaml", METADATA)


@pytest.mark.parametrize(
    "members, message",
    [
        ([_meta(), dir_("rootfs"), reg("/etc/passwd", b"x")], "absolute"),
        ([_meta(), dir_("rootfs"), reg("rootfs/../../evil", b"x")], ".."),
        (
            [_meta(), dir_("rootfs"), sym("rootfs/etc", "../../../etc"), reg("rootfs/etc/x", b"x")],
            "rootfs/etc",
        ),
    ],
    ids=["absolute-path", "dotdot", "symlink-escape"],
)
def test_hostile_image_is_refused_with_nothing_written(make_agent, orch, tmpdir755, members, message):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    bad = write_tar(tmpdir755 / "bad.tar.gz", members)
    err = orch.fails("image", "import", str(bad), "foo:", "--alias", "bad")
    assert message in err
    assert json.loads(orch.run("image", "list", "foo:", "--format", "json").stdout) == []
    assert _leftovers(foo) == []
    assert not Path("/evil").exists() and not (tmpdir755 / "evil").exists()


def test_corrupt_and_empty_archives_are_refused(make_agent, orch, tmpdir755, busybox_image):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    truncated = tmpdir755 / "truncated.tar.gz"
    truncated.write_bytes(busybox_image.read_bytes()[:-4096])
    assert "Error: " in orch.fails("image", "import", str(truncated), "foo:")
    garbage = tmpdir755 / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(10000))
    assert "Error: " in orch.fails("image", "import", str(garbage), "foo:")
    empty = tmpdir755 / "empty.tar"
    empty.write_bytes(b"")
    assert "empty upload" in orch.fails("image", "import", str(empty), "foo:")
    assert "is not a file" in orch.fails("image", "import", str(tmpdir755 / "missing.tar"), "foo:")
    assert _leftovers(foo) == []


def test_duplicate_import_and_alias_errors(make_agent, orch, busybox_image):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    assert "already exists" in orch.fails("image", "import", str(busybox_image), "foo:")
    assert "already exists" in orch.fails("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    fingerprint = json.loads(orch.run("image", "list", "foo:", "--format", "json").stdout)[0]["fingerprint"]
    orch.run("image", "alias", "create", "foo:small", fingerprint[:12])
    aliases = orch.run("image", "alias", "list", "foo:", "--format", "csv").stdout.split()
    assert sorted(a.split(",")[0] for a in aliases) == ["bb", "small"]
    orch.run("image", "delete", "foo:bb")
    assert json.loads(orch.run("image", "list", "foo:", "--format", "json").stdout) == []
    assert _leftovers(foo) == []


@pytest.fixture
def tiny_fs(tmpdir755):  # type: ignore[no-untyped-def]
    """A 6 MiB tmpfs to stand for a full disk."""
    mountpoint = tmpdir755 / "tiny"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=755", "tmpfs", str(mountpoint)], check=True)
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_during_import_fails_cleanly(tiny_fs, orch, tmpdir755):
    from tests.procs import AgentProcess

    agent = AgentProcess(tiny_fs / "agent", "tiny", listen=False).start()
    try:
        orch.run("remote", "add", "tiny", f"unix://{agent.socket}")
        payload = os.urandom(8 * 1024 * 1024)  # incompressible: does not fit in 6 MiB
        big = write_tar(tmpdir755 / "big.tar.gz", [_meta(), dir_("rootfs"), reg("rootfs/blob", payload)])
        err = orch.fails("image", "import", str(big), "tiny:")
        assert "space" in err
        assert json.loads(orch.run("image", "list", "tiny:", "--format", "json").stdout) == []
        assert _leftovers(agent) == []
    finally:
        agent.stop()


# ------------------------------------------------------------------------------------ hostile sizes, cancel


def _tiny_image_declaring(path: Path, declared: int) -> Path:
    """A ~10 KiB gzip image whose one rootfs file declares ``declared`` bytes (and holds 10 KiB)."""
    from tests.test_safetar import block, image_head, info

    path.write_bytes(
        gzip.compress(image_head() + block(info("rootfs/big", size=declared)) + os.urandom(10240))
    )
    return path


@pytest.mark.parametrize("declared", [1 << 40, 10**13], ids=["1TiB", "1e13"])
def test_a_tiny_image_declaring_a_huge_file_is_refused_at_once(make_agent, orch, tmpdir755, declared):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    image = _tiny_image_declaring(tmpdir755 / "tiny.tar.gz", declared)
    assert image.stat().st_size < 11 * 1024
    start = time.monotonic()
    err = orch.fails("image", "import", str(image), "foo:")
    assert time.monotonic() - start < 5  # the CLI's own start included; the agent refuses at the header
    assert "image member 'rootfs/big' declares" in err and "at most" in err
    assert _leftovers(foo) == []
    assert json.loads(orch.run("image", "list", "foo:", "--format", "json").stdout) == []


def test_sparse_images_keep_their_holes_and_absurd_ones_are_refused(make_agent, orch, tmpdir755):
    from tests.test_safetar import gnu_tar_image

    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    huge = gnu_tar_image(tmpdir755, 1 << 40, "posix")
    err = orch.fails("image", "import", str(huge), "foo:")
    assert "'rootfs/sparse' is a file of 1099511627776 bytes, more than the filesystem can hold" in err
    assert _leftovers(foo) == []
    small = gnu_tar_image(tmpdir755, 300 << 20, "gnu")
    orch.run("image", "import", str(small), "foo:", "--alias", "sparse")
    fingerprint = json.loads(orch.run("image", "list", "foo:", "--format", "json").stdout)[0]["fingerprint"]
    st = os.stat(foo.data_dir / "images" / f"{fingerprint}.rootfs" / "sparse")
    assert st.st_size == 300 << 20 and st.st_blocks * 512 <= 64 * 1024


def _slow_image(path: Path, zeros_gib: int) -> Path:
    """A valid image whose rootfs holds ``zeros_gib`` GiB of zeros: a few MiB of gzip that take seconds
    to validate and unpack (gzip members concatenated: one tar stream)."""
    from tests.test_safetar import block, image_head, info

    size = zeros_gib << 30
    chunk = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    noise = os.urandom(1 << 20)  # incompressible: keeps the image within deflate's bound, honestly
    with open(path, "wb") as fh:
        fh.write(gzip.compress(image_head() + block(info("rootfs/noise", size=len(noise))) + noise, mtime=0))
        fh.write(gzip.compress(block(info("rootfs/zeros", size=size)), mtime=0))
        for _ in range(size // (64 << 20)):
            fh.write(chunk)
        fh.write(gzip.compress(bytes(1024), mtime=0))
    return path


def _start_import(agent, image: Path) -> str:  # type: ignore[no-untyped-def]
    from orchapi.client import AgentClient

    client = AgentClient(f"unix://{agent.socket}", timeout=60)
    with open(image, "rb") as fh:
        doc = client.request(
            "POST", "/1.0/images", data=fh, headers={"Content-Type": "application/octet-stream"}
        ).json()
    return str(doc["operation"])


@pytest.mark.parametrize("phase", ["validating", "unpacking"])
def test_cancelling_an_import_stops_it_within_a_second_and_leaves_nothing(make_agent, tmpdir755, phase):
    from orchapi.client import AgentClient

    foo = make_agent("foo", password=None, listen=False)
    client = AgentClient(f"unix://{foo.socket}", timeout=60)
    image = _slow_image(tmpdir755 / "slow.tar.gz", 6)
    operation = _start_import(foo, image)
    images = foo.data_dir / "images"
    deadline = time.monotonic() + 30
    if phase == "unpacking":  # the volume exists once validation passed
        while not any(p.name.endswith(".rootfs") for p in images.iterdir()):
            assert time.monotonic() < deadline, client.get(operation)
            time.sleep(0.02)
        time.sleep(0.3)
    else:
        time.sleep(0.5)
    assert client.get(operation)["status"] == "Running"
    start = time.monotonic()
    client.call("DELETE", operation)
    op = client.get(f"{operation}/wait", params={"timeout": 10})
    assert op["status"] == "Cancelled", op
    assert time.monotonic() - start < 1.0
    assert _leftovers(foo) == []
    assert client.get("/1.0/images") == []


def test_unpacked_images_are_out_of_reach_of_local_users(make_agent, orch, busybox_image):
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    orch.run("image", "import", str(busybox_image), "foo:")
    images = foo.data_dir / "images"
    assert images.stat().st_mode & 0o777 == 0o700
    probe = as_nobody(f"ls {images}/")
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
