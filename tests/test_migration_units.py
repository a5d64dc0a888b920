"""Unit tests of the migration building blocks that judge peer input: tokens, rsync server command lines,
manifests, the tar extractor, method negotiation."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from hostagent import filecaps
from hostagent.migration import manifest, policy
from hostagent.migration.tokens import MigrationRegistry
from hostagent.runtimes.idmap import IdMap
from hostagent.storage.base import StorageDriver
from hostagent.transfer import features as transfer_features
from hostagent.transfer import registry as transfer_registry
from hostagent.transfer.rsync import client_options, validate_server_argv
from hostagent.transfer.tar import extract
from orchapi.errors import BadRequest, Conflict, Forbidden, InsufficientStorage, NotFound

TARGET = "a" * 64
OTHER = "b" * 64

# ------------------------------------------------------------------------------------------- tokens


def issue(registry: MigrationRegistry, ttl: int = 60):
    return registry.issue("c1", None, ["s1"], False, "f" * 64, TARGET, "PEM", ttl)


def test_tokens_are_random_hashed_single_use_and_scoped():
    registry = MigrationRegistry()
    migration, tokens = issue(registry)
    assert set(tokens) == {"image", "fs"} and len(tokens["fs"]) >= 43 and tokens["fs"] != tokens["image"]
    assert tokens["fs"] not in repr(migration) and tokens["image"] not in repr(migration)  # hashes only
    with pytest.raises(Forbidden, match="^invalid migration token$"):
        registry.redeem(migration.id, "fs", tokens["image"], TARGET)  # other channel
    with pytest.raises(Forbidden, match="^invalid migration token$"):
        registry.redeem("unknown-id", "fs", tokens["fs"], TARGET)
    with pytest.raises(Forbidden, match="issued to another agent"):
        registry.redeem(migration.id, "fs", tokens["fs"], OTHER)
    with pytest.raises(Forbidden, match="issued to another agent"):
        registry.redeem(migration.id, "fs", tokens["fs"], None)
    assert registry.redeem(migration.id, "fs", tokens["fs"], TARGET) is migration  # not spent by refusals
    with pytest.raises(Forbidden, match="^migration token already used$"):
        registry.redeem(migration.id, "fs", tokens["fs"], TARGET)
    assert registry.redeem(migration.id, "image", tokens["image"], TARGET) is migration


def test_tokens_expire_and_can_be_revoked():
    registry = MigrationRegistry()
    migration, tokens = issue(registry, ttl=1)
    migration.expires = time.monotonic() - 1
    with pytest.raises(Forbidden, match="expired"):
        registry.redeem(migration.id, "fs", tokens["fs"], TARGET)
    other, tokens = issue(registry)
    registry.revoke(other.id)
    registry.revoke(other.id)  # idempotent
    with pytest.raises(Forbidden, match="revoked"):
        registry.redeem(other.id, "image", tokens["image"], TARGET)
    with pytest.raises(NotFound):
        registry.revoke("nope")
    for ttl in (0, 601, "60", True):
        with pytest.raises(BadRequest, match="ttl"):
            registry.issue("c1", None, [], False, "", TARGET, "PEM", ttl)


# ------------------------------------------------------------------------------------------- rsync argv


REAL = ["peer", "rsync", "--server", "-lHogDtpAXrSe.iLsfxCIvu", "--delete", "--numeric-ids", ".", "volume"]


def test_the_real_server_command_line_is_accepted_with_our_own_destination(tmp_path):
    argv = validate_server_argv(REAL, tmp_path)
    assert argv == [
        "rsync",
        "--server",
        "-lHogDtpAXrSe.iLsfxCIvu",
        "--delete",
        "--numeric-ids",
        ".",
        str(tmp_path),
    ]
    with_checksum = [*REAL[:5], "--checksum", *REAL[5:]]
    assert "--checksum" in validate_server_argv(with_checksum, tmp_path)
    options = ["-aHS", "--numeric-ids", "--delete", "--partial", "-X", "-A"]
    assert client_options(frozenset({"xattrs", "acls", "devices"})) == options
    # a volume without holes is sent without --sparse (the receiver would scan every block for zeros)
    without_holes = ["-aH", "--numeric-ids", "--delete", "--partial"]
    assert client_options(frozenset({"devices"}), sparse=False) == without_holes
    assert "-X" not in client_options(frozenset())
    # an unprivileged target takes no device nodes: the client leaves them out, the server refuses -D
    assert "--no-devices" in client_options(frozenset({"xattrs"}))
    unprivileged = ["peer", "rsync", "--server", "-lHogtpAXrSe.iLsfxCIvu", "--specials", ".", "v"]
    assert "--specials" in validate_server_argv(unprivileged, tmp_path, devices=False)
    with pytest.raises(BadRequest, match=r"device nodes \(-D\)"):
        validate_server_argv(REAL, tmp_path, devices=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["peer", "rsync", "--server", "--sender", "-lr", ".", "x"], "--sender"),
        (["peer", "rsync", "--server", "-lrKe.iLsfxCIvu", ".", "x"], "-K"),
        (["peer", "rsync", "--server", "-lr", "/etc", ".", "x"], "no paths"),
        (["peer", "rsync", "--server", "-lr", "--log-file=/tmp/x", ".", "x"], "not allowed"),
        (["peer", "rsync", "--server", "-lr", "--temp-dir=/", ".", "x"], "not allowed"),
        (["peer", "rsync", "--server", "-lr", "--backup-dir=/etc", ".", "x"], "not allowed"),
        (["peer", "rsync", "--server", "-lr", "--remove-source-files", ".", "x"], "not allowed"),
        (["peer", "sh", "-c", "rm -rf /", ".", "x"], "rsync --server"),
        (["peer", "rsync", "--daemon", "-lr", ".", "x"], "rsync --server"),
        (["peer", "rsync", "--server", "-lr", "x", "."], "end with"),
        (["peer", "rsync", "--server", "-lr", ".", "a", "b"], "no (source )?paths"),
        (["-l", "root", "rsync", "--server", ".", "x"], "remote shell option"),
        (["peer", "rsync", "--server", "-lr\x00", ".", "x"], "strings"),
        ("rsync --server . x", "list"),
    ],
)
def test_hostile_server_command_lines_are_refused(argv, message, tmp_path):
    with pytest.raises(BadRequest, match=message):
        validate_server_argv(argv, tmp_path)


# ------------------------------------------------------------------------------------------- manifests


def test_manifest_covers_types_modes_owners_links_and_content(tmp_path):
    vol = tmp_path / "vol"
    (vol / "d").mkdir(parents=True)
    (vol / "d/f").write_bytes(b"data")
    os.chmod(vol / "d/f", 0o4750)
    os.link(vol / "d/f", vol / "hard")
    os.symlink("/etc/passwd", vol / "link")
    os.mkfifo(vol / "fifo")
    made = manifest.compute(vol)
    entries = {json.loads(line)[0]: json.loads(line) for line in made.lines}
    assert list(entries) == [".", "d", "fifo", "hard", "link", "d/f"]  # a directory's entries, then below
    assert entries["d/f"][1:3] == ["f", 0o4750] and entries["d/f"][5] == 4
    assert entries["d/f"][8] == entries["hard"][8] == __import__("blake3").blake3(b"data").hexdigest()
    assert entries["link"][7] == "/etc/passwd" and entries["d"][6] is None  # no dir mtimes
    assert made.files == 2 and made.digest == manifest.digest_of(made.lines)
    # a copy has the same digest; any change to content, mode or owner changes it
    copy = tmp_path / "copy"
    os.system(f"cp -a {vol} {copy}")
    assert manifest.compute(copy).digest == made.digest
    (copy / "d/f").write_bytes(b"DATA")
    os.utime(copy / "d/f", ns=(os.stat(vol / "d/f").st_atime_ns, os.stat(vol / "d/f").st_mtime_ns))
    changed = manifest.compute(copy)
    assert changed.digest != made.digest
    diffs = manifest.differences(manifest.parse_lines(made.lines), manifest.parse_lines(changed.lines))
    assert diffs == ["hard: blake3 differ", "d/f: blake3 differ"]
    (copy / "extra").write_text("x")
    (copy / "fifo").unlink()
    diffs = manifest.differences(
        manifest.parse_lines(made.lines), manifest.parse_lines(manifest.compute(copy).lines)
    )
    assert "fifo: missing on the target" in diffs and "extra: not on the source" in diffs


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (["../etc/passwd", "f", 420, 0, 0, 1, 0, None, "0" * 64, None, None], r"'\.\.'"),
        (["a/../../b", "d", 493, 0, 0, None, None, None, None, None, None], r"'\.\.'"),
        (["/etc/shadow", "f", 420, 0, 0, 1, 0, None, "0" * 64, None, None], "absolute"),
        (["a//b", "d", 493, 0, 0, None, None, None, None, None, None], "normalised"),
        (["x", "s", 420, 0, 0, None, 0, None, None, None, None], "unknown type"),
        (["x", "f", 0o17777, 0, 0, 1, 0, None, "0" * 64, None, None], "mode"),
        (["x", "f", 420, -1, 0, 1, 0, None, "0" * 64, None, None], "uid"),
        (["x", "d", 420, 0, 0, None, None, "/etc", None, None, None], "only symlinks"),
        (["x", "f", 420, 0, 0, 1, 0, None, "zz", None, None], "blake3"),
        (["x", "d", 493, 0, 0, None, None, None, None, None, "01000002"], "caps"),
        (["x", "f", 420, 0, 0, 1, 0, None, "0" * 64, None, "XYZ"], "caps"),
        (["x", "f", 420, 0, 0], "array"),
    ],
)
def test_hostile_manifests_are_refused(entry, message):
    with pytest.raises(BadRequest, match=message):
        manifest.parse_lines([json.dumps(entry)])


UNPRIVILEGED = IdMap(100000, 65536)


def rules(idmap: IdMap | None, size: int = 1 << 30, entries: int = 10) -> policy.VolumeRules:
    return policy.VolumeRules(idmap, size, entries)


def test_received_volumes_must_fit_the_container(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("x")
    made = manifest.compute(vol)  # owned by root: outside an unprivileged container's ids
    policy.check_received(made, rules(None), "rootfs")
    with pytest.raises(BadRequest, match="outside the container's id range"):
        policy.check_received(made, rules(UNPRIVILEGED), "rootfs")
    os.chown(vol, 100000, 100000)
    os.chown(vol / "f", 100000, 100000)
    policy.check_received(manifest.compute(vol), rules(UNPRIVILEGED), "rootfs")


def test_received_file_capabilities_must_be_the_containers_own(tmp_path):
    """A host-level (v2) capability or one for another namespace would let a local user run the file
    with real capabilities: refused; the container's own namespaced (v3) ones are kept."""
    vol = tmp_path / "vol"
    vol.mkdir()
    tool = vol / "cat"
    tool.write_bytes(b"\x7fELF")
    for p in (vol, tool):
        os.chown(p, 100000, 100000)
    os.setxattr(tool, "security.capability", filecaps.granting(1 << 2, 100000))
    made = manifest.compute(vol)
    assert (
        json.loads(made.lines[-1])[10] == filecaps.granting(1 << 2, 100000).hex()
    )  # caps are part of what is verified
    policy.check_received(made, rules(UNPRIVILEGED), "rootfs")
    # (the kernel itself stores a v3 naming host root as v2, and refuses malformed values)
    for bad, why in (
        (filecaps.granting(1 << 2), "host-level"),
        (filecaps.granting(1 << 2, 0), "host-level"),
        (filecaps.granting(1 << 2, 200000), "not this container"),
    ):
        os.setxattr(tool, "security.capability", bad)
        with pytest.raises(BadRequest, match=why):
            policy.check_received(manifest.compute(vol), rules(UNPRIVILEGED), "rootfs")
        policy.check_received(manifest.compute(vol), rules(None), "rootfs")  # privileged: host caps anyway
    assert "malformed" in (filecaps.refusal(b"\x01\x02", 100000) or "")
    assert filecaps.refusal(filecaps.granting(1 << 2, 100000)[:-1], 100000) is not None
    assert filecaps.refusal(filecaps.granting(1 << 2), None) is None


def test_received_volumes_may_not_outgrow_their_declared_size(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    made = manifest.compute(vol)
    assert made.allocated >= 3 * 1024 * 1024
    policy.check_received(made, rules(None, size=made.allocated, entries=2), "rootfs")
    with pytest.raises(BadRequest, match="more than the 0 the source declared"):
        policy.check_received(made, rules(None, size=0, entries=0), "rootfs")


def test_received_lxd_volumes_hold_metadata_files_and_a_real_rootfs(tmp_path):
    """An LXD volume (btrfs streams between LXD hosts): host-owned metadata files beside ``rootfs/``,
    whose owners must fit the container; nothing else outside it, and ``rootfs`` itself a directory."""
    vol = tmp_path / "vol"
    (vol / "rootfs" / "etc").mkdir(parents=True)
    (vol / "backup.yaml").write_text("x")
    for p in (vol / "rootfs", vol / "rootfs" / "etc"):
        os.chown(p, 100000, 100000)
    unprivileged = rules(UNPRIVILEGED)
    policy.check_received(manifest.compute(vol), unprivileged, "rootfs", "rootfs")
    os.symlink("/etc/shadow", vol / "metadata.yaml")
    with pytest.raises(BadRequest, match="outside its rootfs"):
        policy.check_received(manifest.compute(vol), unprivileged, "rootfs", "rootfs")
    os.unlink(vol / "metadata.yaml")
    os.chown(vol / "rootfs" / "etc", 0, 0)
    with pytest.raises(BadRequest, match="outside the container's id range"):
        policy.check_received(manifest.compute(vol), unprivileged, "rootfs", "rootfs")
    os.chown(vol / "rootfs" / "etc", 100000, 100000)
    os.rename(vol / "rootfs", vol / "real")
    os.symlink("/", vol / "rootfs")
    with pytest.raises(BadRequest, match="is not a directory"):
        policy.check_received(manifest.compute(vol), unprivileged, "rootfs", "rootfs")


# ------------------------------------------------------------------------------------------- tar


def tar_stream(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", uid: int = 100000, **kw) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.uid, info.gid, info.mode, info.size = (
        kind,
        uid,
        uid,
        0o644,
        len(data) if kind == tarfile.REGTYPE else 0,
    )
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data if kind == tarfile.REGTYPE else None


MAP = IdMap(100000, 65536)


def test_tar_extraction_writes_a_volume(tmp_path):
    dest = tmp_path / "vol"
    dest.mkdir()
    stream = tar_stream(
        member(".", tarfile.DIRTYPE, mode=0o755),
        member("./etc", tarfile.DIRTYPE, mode=0o755),
        member("./etc/passwd", data=b"root:x:0:0\n", pax_headers={"SCHILY.xattr.user.k": "v"}),
        member("./etc/hard", tarfile.LNKTYPE, linkname="./etc/passwd"),
        member("./etc/link", tarfile.SYMTYPE, linkname="../../../../etc/shadow"),
    )
    assert extract(stream, dest, MAP) == 5
    assert (dest / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert os.stat(dest / "etc/hard").st_ino == os.stat(dest / "etc/passwd").st_ino
    assert os.readlink(dest / "etc/link") == "../../../../etc/shadow"  # stored, never followed
    assert os.getxattr(dest / "etc/passwd", "user.k") == b"v" and os.stat(dest / "etc").st_uid == 100000


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([member("../escape")], "'..'"),
        ([member("/etc/passwd")], "absolute"),
        ([member("link", tarfile.SYMTYPE, linkname="/etc"), member("link/passwd")], "through the symlink"),
        ([member("f"), member("f/x")], "not a directory"),
        ([member("h", tarfile.LNKTYPE, linkname="/etc/passwd")], "outside the volume"),
        ([member("h", tarfile.LNKTYPE, linkname="nothing")], "earlier regular file"),
        ([member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)], "device node"),
        ([member("root-owned", uid=0)], "outside the container's ids"),
    ],
)
def test_hostile_tar_streams_are_refused(members, message, tmp_path):
    dest = tmp_path / "vol"
    dest.mkdir()
    with pytest.raises(BadRequest, match=message):
        extract(tar_stream(*members), dest, MAP)
    assert not (tmp_path / "passwd").exists() and not os.path.exists("/etc/x")


def test_tar_truncated_stream_and_full_disk(tmp_path):
    dest = tmp_path / "vol"
    dest.mkdir()
    data = tar_stream(member("f", data=b"x" * 10000)).getvalue()
    with pytest.raises(BadRequest, match="truncated or corrupt"):
        extract(io.BytesIO(data[:3000]), dest, MAP)

    class Full(io.RawIOBase):
        pass

    import errno as _errno

    real_write = os.write

    def no_space(fd, buf):
        raise OSError(_errno.ENOSPC, "No space left on device")

    os.write = no_space
    try:
        with pytest.raises(InsufficientStorage, match="no space left on the target"):
            extract(io.BytesIO(data), tmp_path / "vol", MAP)
    finally:
        os.write = real_write


# ------------------------------------------------------------------------------------------- methods


def test_negotiation_and_the_methods_environment_variable():
    assert transfer_registry.negotiate(["btrfs", "rsync", "tar"], ["btrfs", "rsync", "tar"]) == "btrfs"
    assert transfer_registry.negotiate(["btrfs", "rsync", "tar"], ["rsync", "tar"]) == "rsync"
    assert transfer_registry.negotiate(["btrfs", "rsync", "tar"], ["btrfs", "rsync"], refresh=True) == "rsync"
    assert transfer_registry.negotiate(["rsync", "tar"], ["tar"]) == "tar"
    with pytest.raises(Conflict, match="no transfer method in common"):
        transfer_registry.negotiate(["btrfs"], ["tar"])
    available = transfer_registry.available_methods
    assert available(("rsync", "tar"), env={}) == ("rsync", "tar")
    assert available(("btrfs", "rsync", "tar"), env={"ORCH_AGENT_TRANSFER_METHODS": "tar"}) == ("tar",)
    with pytest.raises(ValueError, match="unknown"):
        available(("rsync", "tar"), env={"ORCH_AGENT_TRANSFER_METHODS": "ftp"})
    with pytest.raises(ValueError, match="leaves no transfer method"):
        available(("rsync", "tar"), env={"ORCH_AGENT_TRANSFER_METHODS": "btrfs"})


def test_feature_probe(tmp_path: Path):
    assert transfer_features.probe_features(tmp_path) <= {"xattrs", "acls", "zstd"}


def test_usage_tells_whether_a_volume_has_holes(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "dense").write_bytes(os.urandom(256 * 1024))
    (tmp_path / "link").symlink_to("dir/dense")
    dense = StorageDriver.usage(tmp_path)
    assert dense.sparse is False and dense.entries == 4 and dense.bytes >= 256 * 1024
    with open(tmp_path / "dir" / "holes", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
        fh.seek(32 * 1024 * 1024)
        fh.write(b"x" * 4096)
    holes = StorageDriver.usage(tmp_path)
    assert holes.sparse is True and holes.bytes < dense.bytes + 1024 * 1024
