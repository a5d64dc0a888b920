"""Unified image tarballs: good ones unpack faithfully, hostile and corrupt ones write nothing."""

from __future__ import annotations

import gzip
import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from hostagent.images import tarball
from hostagent.images.tarball import extract_rootfs, inspect_tarball
from orchapi.errors import BadRequest

METADATA = b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: test\n  release: 1.0\n"
MTIME = 1650000000

Member = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, MTIME
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Member:
    info = _info(name, tarfile.REGTYPE, mode, uid, gid)
    info.size = len(data)
    return info, data


def dir_(name: str, mode: int = 0o755) -> Member:
    return _info(name, tarfile.DIRTYPE, mode), None


def sym(name: str, target: str) -> Member:
    info = _info(name, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    return info, None


def hard(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE)
    info.linkname = target
    return info, None


def node(name: str, kind: bytes) -> Member:
    info = _info(name, kind, 0o666)
    info.devmajor, info.devminor = 1, 3
    return info, None


def write_tar(path: Path, members: list[Member], gz: bool = True) -> Path:
    """Write ``members`` in order (no normalisation, so hostile names stay hostile)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def good_members(prefix: str = "") -> list[Member]:
    p = prefix
    return [
        reg(f"{p}metadata.yaml", METADATA),
        dir_(f"{p}rootfs"),
        dir_(f"{p}rootfs/bin"),
        reg(f"{p}rootfs/bin/busybox", b"\x7fELF pretend busybox", 0o755),
        sym(f"{p}rootfs/bin/sh", "busybox"),
        sym(f"{p}rootfs/bin/ls", "/bin/busybox"),
        hard(f"{p}rootfs/bin/hardsh", f"{p}rootfs/bin/busybox"),
        dir_(f"{p}rootfs/usr"),
        dir_(f"{p}rootfs/usr/bin"),
        reg(f"{p}rootfs/usr/bin/passwd", b"setuid tool", 0o4755),
        sym(f"{p}rootfs/usr/bin/up", "../../bin/busybox"),
        dir_(f"{p}rootfs/tmp", 0o1777),
        reg(f"{p}rootfs/home/user/file", b"user data", 0o600, uid=1000, gid=1000),
        node(f"{p}rootfs/run/initctl", tarfile.FIFOTYPE),
        dir_(f"{p}templates"),
        reg(f"{p}templates/hostname.tpl", b"{{ container.name }}"),
    ]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


# ------------------------------------------------------------------------------------------ good images


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("prefix", ["", "./"])
def test_good_image_inspects(tmp_path: Path, gz: bool, prefix: str) -> None:
    image = write_tar(tmp_path / "image", good_members(prefix), gz=gz)
    meta = inspect_tarball(image)
    assert meta.architecture == "x86_64"
    assert meta.creation_date == "2023-11-14T22:13:20+00:00"
    assert meta.properties == {"os": "test", "release": "1.0"}
    assert meta.init == "/sbin/init"
    assert meta.compressed is gz
    assert meta.uncompressed_size >= sum(len(d or b"") for _, d in good_members())
    assert meta.uncompressed_size % 512 == 0


def test_init_comes_from_properties(tmp_path: Path) -> None:
    members = good_members()
    members[0] = reg(
        "metadata.yaml",
        b"architecture: x86_64\ncreation_date: '2024-01-02T03:04:05Z'\n"
        b"properties: {init: /bin/myinit, ok: true}\n",
    )
    meta = inspect_tarball(write_tar(tmp_path / "image", members))
    assert meta.init == "/bin/myinit"
    assert meta.properties == {"init": "/bin/myinit", "ok": "true"}
    assert meta.creation_date == "2024-01-02T03:04:05+00:00"


@pytest.mark.parametrize("prefix", ["", "./"])
def test_good_image_extracts_faithfully(tmp_path: Path, dest: Path, prefix: str) -> None:
    extract_rootfs(write_tar(tmp_path / "image", good_members(prefix)), dest)
    busybox = dest / "bin/busybox"
    assert busybox.read_bytes() == b"\x7fELF pretend busybox"
    assert stat.S_IMODE(busybox.stat().st_mode) == 0o755
    assert busybox.stat().st_mtime == MTIME
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert os.readlink(dest / "bin/ls") == "/bin/busybox"
    assert os.readlink(dest / "usr/bin/up") == "../../bin/busybox"
    assert (dest / "bin/hardsh").stat().st_ino == busybox.stat().st_ino
    assert stat.S_IMODE((dest / "usr/bin/passwd").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_ISFIFO((dest / "run/initctl").lstat().st_mode)
    assert (dest / "bin").stat().st_mtime == MTIME
    if os.geteuid() == 0:
        st = (dest / "home/user/file").stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert (dest / "usr/bin/passwd").stat().st_uid == 0
    assert sorted(os.listdir(dest)) == ["bin", "home", "run", "tmp", "usr"]  # no metadata.yaml, no templates


def test_later_duplicate_of_same_type_replaces_content(tmp_path: Path, dest: Path) -> None:
    members = good_members() + [reg("rootfs/bin/busybox", b"second", 0o755)]
    extract_rootfs(write_tar(tmp_path / "image", members), dest)
    assert (dest / "bin/busybox").read_bytes() == b"second"
    assert (dest / "bin/hardsh").read_bytes() == b"\x7fELF pretend busybox"  # replaced, not written through


# ------------------------------------------------------------------------------------------ hostile images

HOSTILE: dict[str, tuple[list[Member], str]] = {
    "absolute": ([reg("/etc/cron.d/evil", b"x")], "'/etc/cron.d/evil'"),
    "dotdot": ([reg("rootfs/../evil", b"x")], "'rootfs/../evil'"),
    "dotdot-deep": ([reg("./rootfs/bin/../../../evil", b"x")], "'./rootfs/bin/../../../evil'"),
    "outside-top": ([reg("evil.sh", b"x")], "'evil.sh'"),
    "outside-dir": ([reg("other/evil", b"x")], "'other/evil'"),
    "below-metadata": ([reg("metadata.yaml/x", b"x")], "'metadata.yaml/x'"),
    "hardlink-absolute": ([hard("rootfs/shadow", "/etc/shadow")], "'rootfs/shadow'"),
    "hardlink-dotdot": ([hard("rootfs/h", "rootfs/../metadata.yaml")], "'rootfs/h'"),
    "hardlink-outside": ([hard("rootfs/h", "metadata.yaml")], "'rootfs/h'"),
    "hardlink-to-later": ([hard("rootfs/h", "rootfs/later"), reg("rootfs/later")], "'rootfs/h'"),
    "hardlink-to-missing": ([hard("rootfs/h", "rootfs/nothing")], "'rootfs/h'"),
    "hardlink-to-dir": ([hard("rootfs/h", "rootfs/bin")], "'rootfs/h'"),
    "hardlink-to-symlink": ([hard("rootfs/h", "rootfs/bin/sh")], "'rootfs/h'"),
    "hardlink-to-itself": ([reg("rootfs/self"), hard("rootfs/self", "rootfs/self")], "'rootfs/self'"),
    "symlink-climbs": ([sym("rootfs/esc", "../etc")], "'rootfs/esc'"),
    "symlink-climbs-deep": ([sym("rootfs/bin/esc", "../../../../etc")], "'rootfs/bin/esc'"),
    "symlink-climbs-late": ([sym("rootfs/bin/esc", "x/../../..")], "'rootfs/bin/esc'"),
    "symlink-empty": ([sym("rootfs/empty", "")], "'rootfs/empty'"),
    "through-abs-symlink": (
        [sym("rootfs/etc2", "/etc"), reg("rootfs/etc2/passwd", b"x")],
        "'rootfs/etc2/passwd'",
    ),
    "through-rel-symlink": ([sym("rootfs/b2", "bin"), reg("rootfs/b2/new", b"x")], "'rootfs/b2/new'"),
    "through-deep-symlink": ([sym("rootfs/l", "/"), dir_("rootfs/l/a"), reg("rootfs/l/a/b")], "'rootfs/l/a'"),
    "below-a-file": ([reg("rootfs/bin/busybox/x", b"x")], "'rootfs/bin/busybox/x'"),
    "char-device": ([node("rootfs/dev/null", tarfile.CHRTYPE)], "device node"),
    "block-device": ([node("rootfs/dev/sda", tarfile.BLKTYPE)], "'rootfs/dev/sda'"),
    "uid-too-big": ([reg("rootfs/big", b"x", uid=65536)], "'rootfs/big'"),
    "gid-too-big": ([reg("rootfs/big", b"x", gid=100000)], "'rootfs/big'"),
    "dir-becomes-symlink": ([sym("rootfs/bin", "/")], "'rootfs/bin'"),
    "file-becomes-dir": ([dir_("rootfs/bin/busybox")], "'rootfs/bin/busybox'"),
    "symlink-becomes-file": ([reg("rootfs/bin/sh", b"x")], "'rootfs/bin/sh'"),
    "implicit-dir-becomes-symlink": ([reg("rootfs/new/f"), sym("rootfs/new", "/etc")], "'rootfs/new'"),
    "rootfs-becomes-symlink": ([sym("rootfs", "/")], "'rootfs'"),
    "templates-symlink": ([sym("templates/x", "/etc/shadow")], "'templates/x'"),
    "second-metadata": ([reg("metadata.yaml", METADATA)], "'metadata.yaml'"),
    "long-name": ([reg("rootfs/" + "a" * 256)], "longer than 255"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_written(tmp_path: Path, dest: Path, case: str) -> None:
    extra, expected = HOSTILE[case]
    image = write_tar(tmp_path / "image", good_members() + extra)
    with pytest.raises(BadRequest) as inspected:
        inspect_tarball(image)
    assert expected in inspected.value.message
    assert "\n" not in inspected.value.message
    with pytest.raises(BadRequest):
        extract_rootfs(image, dest)
    assert os.listdir(dest) == []


def test_device_message_explains_why(tmp_path: Path) -> None:
    image = write_tar(tmp_path / "image", good_members() + [node("rootfs/dev/null", tarfile.CHRTYPE)])
    with pytest.raises(BadRequest, match="'rootfs/dev/null'.*containers are unprivileged"):
        inspect_tarball(image)


def test_symlink_first_then_metadata_is_refused(tmp_path: Path, dest: Path) -> None:
    image = write_tar(tmp_path / "image", [sym("metadata.yaml", "/etc/shadow"), dir_("rootfs")])
    with pytest.raises(BadRequest, match="'metadata.yaml' must be a regular file"):
        extract_rootfs(image, dest)
    assert os.listdir(dest) == []


def test_extraction_is_safe_without_inspection(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the pre-check were skipped (or the file changed after it), no write goes through a symlink."""
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setattr(tarball, "inspect_tarball", lambda path, **options: None)
    image = write_tar(
        tmp_path / "image", good_members() + [sym("rootfs/esc", str(outside)), reg("rootfs/esc/pwned")]
    )
    with pytest.raises(BadRequest, match="'rootfs/esc/pwned'"):
        extract_rootfs(image, dest)
    assert os.listdir(outside) == []


# ------------------------------------------------------------------------------------------ corrupt files


def _good_bytes(tmp_path: Path, gz: bool) -> bytes:
    return write_tar(tmp_path / "good", good_members(), gz=gz).read_bytes()


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(random.Random(7).randbytes(20000))
    with pytest.raises(BadRequest, match="not a valid tar"):
        inspect_tarball(image)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"")
    with pytest.raises(BadRequest, match="not a valid tar"):
        inspect_tarball(image)


def test_other_compression_is_named(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"\xfd7zXZ\x00" + b"\x00" * 100)
    with pytest.raises(BadRequest, match="xz-compressed"):
        inspect_tarball(image)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_is_refused(tmp_path: Path, dest: Path, gz: bool) -> None:
    data = _good_bytes(tmp_path, gz)
    image = tmp_path / "image"
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match="truncated|corrupt|not a valid"):
        inspect_tarball(image)
    with pytest.raises(BadRequest):
        extract_rootfs(image, dest)
    assert os.listdir(dest) == []


def test_plain_tar_cut_at_header_boundary_is_refused(tmp_path: Path) -> None:
    """tarfile itself would silently return the members before the cut."""
    data = _good_bytes(tmp_path, gz=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    image = tmp_path / "image"
    image.write_bytes(data[: last.offset])
    with pytest.raises(BadRequest, match="truncated"):
        inspect_tarball(image)


def test_gzip_without_trailer_is_refused(tmp_path: Path) -> None:
    data = _good_bytes(tmp_path, gz=True)
    image = tmp_path / "image"
    image.write_bytes(data[:-8])  # CRC32 and length gone: tarfile's own gzip reader would not notice
    with pytest.raises(BadRequest, match="truncated|corrupt"):
        inspect_tarball(image)


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    data = bytearray(_good_bytes(tmp_path, gz=True))
    for i in range(40, 60):
        data[i] ^= 0x5A
    image = tmp_path / "image"
    image.write_bytes(bytes(data))
    with pytest.raises(BadRequest):
        inspect_tarball(image)


def test_corrupt_header_in_the_middle_is_refused(tmp_path: Path) -> None:
    data = bytearray(_good_bytes(tmp_path, gz=False))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        victim = tf.getmembers()[5]
    data[victim.offset + 3] ^= 0xFF  # breaks the header checksum
    image = tmp_path / "image"
    image.write_bytes(bytes(data))
    with pytest.raises(BadRequest, match="corrupt"):
        inspect_tarball(image)


# ------------------------------------------------------------------------------------------ metadata.yaml

BAD_METADATA = {
    "not-yaml": (b"architecture: [x86_64\n", "not valid YAML"),
    "python-tag": (b"!!python/object/apply:os.system ['touch /tmp/pwned']\n", "not valid YAML"),
    "list": (b"- architecture\n- creation_date\n", "mapping"),
    "no-architecture": (b"creation_date: 1700000000\n", "architecture"),
    "no-creation-date": (b"architecture: x86_64\n", "creation_date"),
    "bad-creation-date": (b"architecture: x86_64\ncreation_date: yesterday\n", "creation_date"),
    "properties-list": (b"architecture: x86_64\ncreation_date: 1\nproperties: [a]\n", "properties"),
    "nested-property": (b"architecture: x86_64\ncreation_date: 1\nproperties: {a: {b: c}}\n", "'a'"),
    "not-utf8": (b"architecture: \xff\xfe\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_malformed_metadata_is_refused(tmp_path: Path, dest: Path, case: str) -> None:
    content, expected = BAD_METADATA[case]
    members = good_members()
    members[0] = reg("metadata.yaml", content)
    image = write_tar(tmp_path / "image", members)
    with pytest.raises(BadRequest) as err:
        extract_rootfs(image, dest)
    assert "metadata.yaml" in err.value.message and expected in err.value.message
    assert os.listdir(dest) == []


def test_missing_metadata_is_refused(tmp_path: Path) -> None:
    image = write_tar(tmp_path / "image", good_members()[1:])
    with pytest.raises(BadRequest, match="no metadata.yaml"):
        inspect_tarball(image)


def test_huge_metadata_is_refused(tmp_path: Path) -> None:
    members = good_members()
    members[0] = reg("metadata.yaml", METADATA + b"#" * (2 * 1024 * 1024))
    with pytest.raises(BadRequest, match="'metadata.yaml' is too large"):
        inspect_tarball(write_tar(tmp_path / "image", members))


def test_missing_rootfs_is_refused(tmp_path: Path) -> None:
    image = write_tar(tmp_path / "image", [reg("metadata.yaml", METADATA), dir_("templates")])
    with pytest.raises(BadRequest, match="no rootfs/"):
        inspect_tarball(image)
