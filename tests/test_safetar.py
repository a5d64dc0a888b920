"""hostagent/safetar: the one validator and writer for images and tar-transferred volumes.

Hostile sizes (tiny archives declaring huge members), sparse members (holes stay holes, counted right,
absurd ones refused), the volume policy's xattr rules on streams made by the real sender's GNU tar, and
cancellation. Tests against real agents are in tests/test_images_cli.py.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from hostagent import safetar
from hostagent.images.tarball import extract_rootfs, inspect_tarball
from hostagent.runtimes.idmap import IdMap
from hostagent.safetar import Cancelled
from hostagent.transfer.tar import extract, tar_argv
from orchapi.errors import BadRequest, InsufficientStorage
from tests.test_image_tarball import METADATA

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAP = IdMap(100000, 65536)
CAP_NET_RAW = 1 << 13
V1_CAP = struct.pack("<III", 0x01000000, CAP_NET_RAW, 0)
V2_CAP = struct.pack("<IIIII", 0x02000001, CAP_NET_RAW, 0, 0, 0)


def v3_cap(rootid: int) -> bytes:
    return struct.pack("<IIIIII", 0x03000001, CAP_NET_RAW, 0, 0, 0, rootid)


def info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644, uid: int = 0
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = kind, size, mode, uid, uid, 1650000000
    return ti


def block(ti: tarfile.TarInfo, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    return ti.tobuf(fmt, "utf-8", "surrogateescape")


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def image_head() -> bytes:
    """metadata.yaml and rootfs/ as raw tar blocks."""
    return (
        block(info("metadata.yaml", size=len(METADATA)))
        + padded(METADATA)
        + block(info("rootfs", tarfile.DIRTYPE, mode=0o755))
    )


def pax_stream(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def sparse_10(
    name: str, realsize: int, segments: list[tuple[int, int]], data: bytes, count: int | None = None
):
    """A pax 1.0 sparse member (GNU tar --format=posix --sparse): map and data as given, even lies."""
    numbers = [len(segments) if count is None else count] + [n for seg in segments for n in seg]
    content = padded("".join(f"{n}\n" for n in numbers).encode()) + data
    ti = info(f"GNUSparseFile.0/{os.path.basename(name)}", size=len(content))
    ti.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    return ti, content


def vol(tmp_path: Path) -> Path:
    dest = tmp_path / "vol"
    dest.mkdir()
    return dest


# ------------------------------------------------------------------------------------ declared sizes


@pytest.mark.parametrize("declared", [TiB, 10**13])
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu-base256", "pax-size"])
def test_a_tiny_gzip_image_declaring_a_huge_member_is_refused_at_its_header(tmp_path, declared, fmt):
    raw = image_head() + block(info("rootfs/big", size=declared), fmt) + os.urandom(10 * KiB)
    image = tmp_path / "image.tar.gz"
    image.write_bytes(gzip.compress(raw))
    assert image.stat().st_size < 11 * KiB
    dest = vol(tmp_path)
    for attempt in (lambda: inspect_tarball(image), lambda: extract_rootfs(image, dest, inspected=True)):
        start = time.monotonic()
        with pytest.raises(BadRequest) as err:
            attempt()
        assert time.monotonic() - start < 0.5
        message = err.value.message
        assert f"image member 'rootfs/big' declares {declared + (-declared % 512)} bytes of data" in message
        assert "at most" in message and "\n" not in message
    assert os.listdir(dest) == []


def test_a_plain_image_is_bounded_by_its_own_size(tmp_path):
    image = tmp_path / "image.tar"
    image.write_bytes(image_head() + block(info("rootfs/big", size=GiB)) + bytes(4 * KiB))
    with pytest.raises(
        BadRequest, match=r"'rootfs/big' declares 1073741824 bytes of data, but at most 4096 can"
    ):
        inspect_tarball(image)


def test_a_stream_declaring_a_huge_member_is_refused_or_cut_at_once(tmp_path):
    fs = os.statvfs(tmp_path)
    free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
    root = block(info(".", tarfile.DIRTYPE, mode=0o755, uid=100000))

    def declaring(size: int) -> io.BytesIO:
        return io.BytesIO(root + block(info("./big", size=size, uid=100000)) + bytes(10 * KiB))

    start = time.monotonic()
    # the budget (the volume's allowance) refuses it at its header
    with pytest.raises(
        BadRequest, match=r"'./big' would bring .* more than the 1048576 allowed for this volume"
    ):
        extract(declaring(GiB), vol(tmp_path), MAP, allowance=MiB)
    # without an allowance, the free space does; and more than the filesystem holds is refused as such
    with pytest.raises(
        InsufficientStorage, match=r"^no space left on the target while receiving the volume: .*'./big' needs"
    ):
        extract(declaring((free + total) // 2), tmp_path / "vol", MAP)
    with pytest.raises(
        InsufficientStorage, match=r"'./big' is a file of .* more than the filesystem can hold"
    ):
        extract(declaring(total + 1), tmp_path / "vol", MAP)
    # and a stream that only pretends is cut as soon as it ends
    small = block(info(".", tarfile.DIRTYPE, uid=100000)) + block(info("./f", size=40 * KiB, uid=100000))
    with pytest.raises(BadRequest, match="truncated or corrupt at or after member './f'"):
        safetar.validate(io.BytesIO(small + bytes(10 * KiB)), safetar.volume_policy(MAP))
    assert time.monotonic() - start < 0.5


# ------------------------------------------------------------------------------------ sparse members


def gnu_tar_image(tmp_path: Path, apparent: int, fmt: str) -> Path:
    """An image made by GNU tar itself whose rootfs holds one sparse file: 5 bytes at 1 MiB."""
    src = tmp_path / f"src-{fmt}"
    (src / "rootfs").mkdir(parents=True)
    (src / "metadata.yaml").write_bytes(METADATA)
    with open(src / "rootfs/sparse", "wb") as fh:
        fh.truncate(apparent)
        fh.seek(MiB)
        fh.write(b"hello")
    image = tmp_path / f"sparse-{fmt}.tar.gz"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-czf", str(image), "-C", str(src), "metadata.yaml", "rootfs"],
        check=True,
    )
    return image


@pytest.mark.parametrize("fmt", ["posix", "gnu"], ids=["pax-1.0", "old-gnu"])
def test_sparse_members_are_written_as_holes_and_counted_as_their_data(tmp_path, fmt):
    image = gnu_tar_image(tmp_path, 300 * MiB, fmt)
    assert image.stat().st_size < 1024  # the "274-byte image" of the report
    meta = inspect_tarball(image)
    assert meta.data_size == 4096 + len(METADATA)  # GNU tar stores the one data block, not the holes
    dest = vol(tmp_path)
    extract_rootfs(image, dest)
    st = os.stat(dest / "sparse")
    assert st.st_size == 300 * MiB
    assert st.st_blocks * 512 <= 64 * KiB  # holes stayed holes (was: 300 MiB allocated)
    with open(dest / "sparse", "rb") as fh:
        fh.seek(MiB - 3)
        assert fh.read(10) == b"\0\0\0hello\0\0"


@pytest.mark.parametrize("fmt", ["posix", "gnu"], ids=["pax-1.0", "old-gnu"])
def test_a_sparse_member_larger_than_the_filesystem_is_refused(tmp_path, fmt):
    image = gnu_tar_image(tmp_path, TiB, fmt)
    total = os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    assert total < TiB, "this test needs a filesystem smaller than 1 TiB"
    dest = vol(tmp_path)
    start = time.monotonic()
    with pytest.raises(
        InsufficientStorage,
        match=r"'rootfs/sparse' is a file of 1099511627776 bytes, more than the filesystem can hold",
    ):
        inspect_tarball(image, apparent_limit=total)
    with pytest.raises(InsufficientStorage, match="more than the filesystem can hold"):
        extract_rootfs(image, dest)
    assert time.monotonic() - start < 0.5 and os.listdir(dest) == []


def test_a_sparse_stream_of_10_kib_makes_a_1_gib_file_of_holes(tmp_path):
    ti, content = sparse_10("./big", GiB, [(GiB - 4096, 4096)], os.urandom(4096))
    ti.uid = ti.gid = 100000
    stream = pax_stream((info(".", tarfile.DIRTYPE, uid=100000), None), (ti, content))
    assert len(stream) <= 10 * KiB
    dest = vol(tmp_path)
    result = safetar.extract(io.BytesIO(stream), dest, safetar.volume_policy(MAP, allowance=8 * KiB))
    assert result.data == 4096
    st = os.stat(dest / "big")
    assert st.st_size == GiB and st.st_blocks * 512 <= 64 * KiB


@pytest.mark.parametrize(
    ("segments", "data", "count", "message"),
    [
        ([(0, 4096)], b"x" * 100, None, "sparse map holds 4096 bytes, but the member stores 100"),
        ([(4096, 100), (0, 100)], b"x" * 200, None, "out of order or overlaps"),
        ([(0, 200), (100, 100)], b"x" * 300, None, "out of order or overlaps"),
        ([(MiB, 100)], b"x" * 100, None, "past the file's"),
        ([], b"", 10**12, "more than 262144 segments"),
        ([(0, 1)] * 100, b"x", 200, "runs past the member's data"),
    ],
    ids=["more-than-stored", "backwards", "overlap", "past-realsize", "huge-count", "map-past-data"],
)
def test_lying_sparse_maps_are_refused(tmp_path, segments, data, count, message):
    ti, content = sparse_10("rootfs/s", MiB, segments, data, count)
    raw = image_head() + pax_stream((ti, content))
    image = tmp_path / "image.tar"
    image.write_bytes(raw)
    start = time.monotonic()
    with pytest.raises(BadRequest, match=message) as err:
        inspect_tarball(image)
    assert "'rootfs/s'" in err.value.message and time.monotonic() - start < 0.5


# ------------------------------------------------------------------------------------ the volume policy


def tar_of(src: Path) -> bytes:
    """The stream the tar method's source sends (its own argv)."""
    return subprocess.run(tar_argv(src), check=True, capture_output=True).stdout


def source_volume(tmp_path: Path, caps: bytes | None, uid: int = 100000) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ping").write_bytes(b"\x7fELF ping")
    for p in (src, src / "ping"):
        os.chown(p, uid, uid)
    if caps is not None:
        os.setxattr(src / "ping", "security.capability", caps)
    return src


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sets file capabilities and owners")


@needs_root
def test_a_namespaced_capability_for_the_container_root_is_kept(tmp_path):
    src = source_volume(tmp_path, v3_cap(MAP.host_base))
    dest = vol(tmp_path)
    extract(io.BytesIO(tar_of(src)), dest, MAP)
    assert os.getxattr(dest / "ping", "security.capability") == v3_cap(MAP.host_base)
    assert os.stat(dest / "ping").st_uid == MAP.host_base


@needs_root
@pytest.mark.parametrize(
    ("caps", "message"),
    [
        (V2_CAP, r"host-level \(v2\) file capability"),
        (v3_cap(200000), "rooted at host uid 200000, not this container's \\(100000\\)"),
    ],
    ids=["v2", "v3-other-root"],
)
def test_host_capabilities_from_a_real_tar_stream_are_refused(tmp_path, caps, message):
    dest = vol(tmp_path)
    with pytest.raises(
        BadRequest, match=f"refusing the tar stream from the source: member './ping' .*{message}"
    ):
        extract(io.BytesIO(tar_of(source_volume(tmp_path, caps))), dest, MAP)
    assert not (dest / "ping").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [(V1_CAP, r"has a host-level \(v1\)"), (b"\x00\x00\x00\x03\x01", "has a malformed file capability")],
    ids=["v1", "malformed"],
)
def test_crafted_capabilities_are_refused(tmp_path, value, message):
    ti = info("./ping", size=4, uid=100000)
    ti.pax_headers = {"SCHILY.xattr.security.capability": value.decode("utf-8", "surrogateescape")}
    stream = pax_stream((info(".", tarfile.DIRTYPE, uid=100000), None), (ti, b"ping"))
    with pytest.raises(BadRequest, match=f"'./ping' {message}"):
        extract(io.BytesIO(stream), vol(tmp_path), MAP)


@needs_root
def test_a_privileged_volume_keeps_host_capabilities_and_devices(tmp_path):
    src = source_volume(tmp_path, V2_CAP, uid=0)
    os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)
    dest = vol(tmp_path)
    extract(io.BytesIO(tar_of(src)), dest, None)
    assert os.getxattr(dest / "ping", "security.capability") == V2_CAP
    st = os.lstat(dest / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and stat.S_IMODE(st.st_mode) == 0o666


def _acl(entries: list[tuple[int, int, int]]) -> str:
    return (struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)).decode(
        "utf-8", "surrogateescape"
    )


@pytest.mark.parametrize(
    ("members", "allowance", "error", "message"),
    [
        (
            [info("./null", tarfile.CHRTYPE, uid=100000)],
            None,
            BadRequest,
            "device node, and the container is unprivileged",
        ),
        (
            [info("./f", size=1, uid=0)],
            None,
            BadRequest,
            r"owned by uid 0 gid 0, outside the container's ids",
        ),
        ([info("./f", size=1, uid=165536)], None, BadRequest, "outside the container's ids"),
        (
            [info("./a", size=600 * KiB, uid=100000), info("./b", size=600 * KiB, uid=100000)],
            MiB,
            BadRequest,  # the budget of a volume is what its source declared: exceeding it is a lie
            r"more than it declared .*'./b' would bring the data written to 1228800 bytes, more than the "
            r"1048576 allowed",
        ),
    ],
    ids=["device", "host-root", "beyond-range", "budget"],
)
def test_the_volume_policy_refuses(tmp_path, members, allowance, error, message):
    stream = pax_stream(
        (info(".", tarfile.DIRTYPE, uid=100000), None), *((m, bytes(m.size)) for m in members)
    )
    dest = vol(tmp_path)
    with pytest.raises(error, match=message):
        extract(io.BytesIO(stream), dest, MAP, allowance)
    assert not (dest / "b").exists() and not (dest / "null").exists()


def test_acls_naming_host_ids_are_refused(tmp_path):
    ti = info("./f", size=1, uid=100000)
    ti.pax_headers = {
        "SCHILY.xattr.system.posix_acl_access": _acl(
            [
                (1, 6, 0xFFFFFFFF),
                (2, 7, 1000),
                (4, 4, 0xFFFFFFFF),
                (0x10, 7, 0xFFFFFFFF),
                (0x20, 4, 0xFFFFFFFF),
            ]
        )
    }
    stream = pax_stream((info(".", tarfile.DIRTYPE, uid=100000), None), (ti, b"x"))
    with pytest.raises(BadRequest, match=r"'./f' has an ACL entry \(system.posix_acl_access\) for uid 1000"):
        extract(io.BytesIO(stream), vol(tmp_path), MAP)
    # the same ACL naming an id of the container passes
    ti.pax_headers = {
        "SCHILY.xattr.system.posix_acl_access": _acl(
            [
                (1, 6, 0xFFFFFFFF),
                (2, 7, 101000),
                (4, 4, 0xFFFFFFFF),
                (0x10, 7, 0xFFFFFFFF),
                (0x20, 4, 0xFFFFFFFF),
            ]
        )
    }
    stream = pax_stream((info(".", tarfile.DIRTYPE, uid=100000), None), (ti, b"x"))
    assert extract(io.BytesIO(stream), tmp_path / "vol", MAP) == 2


def test_images_never_write_xattrs_or_devices(tmp_path):
    ti = info("rootfs/ping", size=4)
    ti.pax_headers = {"SCHILY.xattr.security.capability": V2_CAP.decode("utf-8", "surrogateescape")}
    image = tmp_path / "image.tar"
    image.write_bytes(image_head() + pax_stream((ti, b"ping")))
    dest = vol(tmp_path)
    extract_rootfs(image, dest)
    assert os.listxattr(dest / "ping") == []


# ------------------------------------------------------------------------------------ cancellation


class Endless(io.RawIOBase):
    """A tar stream that declares a huge member and then never ends (zeros, as fast as asked)."""

    def __init__(self) -> None:
        self.head = memoryview(block(info(".", tarfile.DIRTYPE)) + block(info("./big", size=TiB)))

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:  # type: ignore[no-untyped-def]
        n = min(len(view), len(self.head)) if self.head else len(view)
        if self.head:
            view[:n] = self.head[:n]
            self.head = self.head[n:]
        else:
            view[:n] = bytes(n)
        return n


@pytest.mark.parametrize("flag", ["event", "callable"])
def test_a_validation_stops_promptly_when_cancelled(flag):
    event = threading.Event()
    cancel = event if flag == "event" else event.is_set
    timer = threading.Timer(0.3, event.set)
    timer.start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        safetar.validate(Endless(), safetar.volume_policy(None), cancel=cancel)
    assert 0.3 <= time.monotonic() - start < 1.3


def test_an_image_extraction_stops_promptly_when_cancelled(tmp_path):
    image = tmp_path / "image.tar"
    with open(image, "wb") as fh:
        fh.write(image_head() + block(info("rootfs/big", size=2 * GiB)))
        fh.truncate(fh.tell() + 2 * GiB + 1024)  # a plain file: reading it costs real work
    dest = vol(tmp_path)
    event = threading.Event()
    threading.Timer(0.3, event.set).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        extract_rootfs(image, dest, cancel=event, inspected=True)
    assert time.monotonic() - start < 1.3
    assert os.stat(dest / "big").st_size < 2 * GiB  # stopped midway (the caller removes it)
