"""Image import through the CLI and a real agent: hostile, corrupt and too-big archives leave nothing."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

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
