"""The image store: all-or-nothing imports, lookups by fingerprint, prefix and alias, deletes and aliases."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from hostagent.images import store as store_module
from hostagent.images.store import ImageStore
from hostagent.storage.base import StorageDriver
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, NotFound

REPO = Path(__file__).resolve().parent.parent

try:
    from hostagent.storage.dir import DirDriver as Driver
except ImportError:  # storage/dir.py is written by someone else; this stands in until it lands

    class Driver(StorageDriver):  # type: ignore[no-redef]
        """Plain directories, copied with ``cp -a``."""

        name = "dir"

        def create_volume(self, path: Path) -> None:
            os.mkdir(path, 0o755)

        def clone_volume(self, source: Path, path: Path) -> None:
            subprocess.run(["cp", "-a", "--", str(source), str(path)], check=True)

        def snapshot_volume(self, source: Path, path: Path) -> None:
            self.clone_volume(source, path)

        def delete_volume(self, path: Path) -> None:
            self._remove_tree(path)


def make_image(
    path: Path, creation_date: int = 1700000000, extra: list[tarfile.TarInfo] | None = None
) -> Path:
    """A small valid unified tarball; ``creation_date`` varies the fingerprint."""
    meta = f"architecture: x86_64\ncreation_date: {creation_date}\nproperties: {{os: test}}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (
            ("metadata.yaml", meta),
            ("rootfs/bin/busybox", b"busybox"),
            ("rootfs/etc/hostname", b"t\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[str]:
    """Everything under ``root``, for before/after comparisons."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images", Driver(tmp_path))


def test_init_makes_private_root_and_empty_tmp(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "stale-upload").write_bytes(b"half")
    s = ImageStore(root, Driver(tmp_path))
    assert (root.stat().st_mode & 0o777) == 0o700  # nobody else reaches an unpacked image
    assert s.upload_dir() == root / "tmp"
    assert os.listdir(root / "tmp") == []


def test_import_stores_tarball_record_and_rootfs(store: ImageStore, tmp_path: Path) -> None:
    upload = make_image(store.upload_dir() / "upload-1")
    fingerprint = sha256(upload)
    record = store.import_tarball(upload, ["base"])
    assert record.fingerprint == fingerprint
    assert not upload.exists()
    assert store.tarball_path(fingerprint).read_bytes()[:2] == b"\x1f\x8b"
    assert sha256(store.tarball_path(fingerprint)) == fingerprint
    assert (store.rootfs(fingerprint) / "bin/busybox").read_bytes() == b"busybox"
    assert (store.root / f"{fingerprint}.json").is_file()
    api = record.to_api()
    assert api["fingerprint"] == fingerprint
    assert api["size"] == store.tarball_path(fingerprint).stat().st_size
    assert api["architecture"] == "x86_64"
    assert api["created_at"] == "2023-11-14T22:13:20+00:00"
    assert api["properties"] == {"os": "test"}
    assert api["aliases"] == [{"name": "base", "description": ""}]
    assert (api["public"], api["type"]) == (False, "container")
    assert api["filename"] == f"{fingerprint}.tar.gz"
    assert record.init == "/sbin/init"


def test_import_from_another_directory_moves_the_file(store: ImageStore, tmp_path: Path) -> None:
    upload = make_image(tmp_path / "image.tar.gz")
    record = store.import_tarball(upload)
    assert not upload.exists()
    assert store.get(record.fingerprint).fingerprint == record.fingerprint


def test_duplicate_import_conflicts_and_consumes_upload(store: ImageStore, tmp_path: Path) -> None:
    first = store.import_tarball(make_image(tmp_path / "a"))
    before = tree(store.root)
    again = make_image(tmp_path / "b")
    with pytest.raises(Conflict, match=first.fingerprint):
        store.import_tarball(again)
    assert not again.exists()
    assert tree(store.root) == before


def test_concurrent_import_of_the_same_image_succeeds_once(store: ImageStore, tmp_path: Path) -> None:
    uploads = [make_image(tmp_path / f"u{i}") for i in range(4)]
    outcomes: list[str] = []

    def run(path: Path) -> None:
        try:
            store.import_tarball(path)
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=run, args=(u,)) for u in uploads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "ok"]
    assert len(store.list()) == 1


def test_get_by_alias_prefix_and_fingerprint(store: ImageStore, tmp_path: Path) -> None:
    fp = store.import_tarball(make_image(tmp_path / "a"), ["deb/12"]).fingerprint
    assert store.get(fp).fingerprint == fp
    assert store.get("deb/12").fingerprint == fp
    assert store.get(fp[:12]).fingerprint == fp
    assert store.get(fp[:1]).fingerprint == fp
    assert store.get(fp[:12].upper()).fingerprint == fp
    with pytest.raises(NotFound) as err:
        store.get("nosuchimage")
    assert err.value.hint and "image list" in err.value.hint
    with pytest.raises(BadRequest):
        store.get("")


def test_ambiguous_prefix_is_refused(store: ImageStore, tmp_path: Path) -> None:
    by_first: dict[str, str] = {}
    for i in range(64):  # 17 images guarantee two fingerprints sharing a first hex digit
        fp = store.import_tarball(make_image(tmp_path / f"i{i}", creation_date=1700000000 + i)).fingerprint
        if fp[0] in by_first:
            break
        by_first[fp[0]] = fp
    with pytest.raises(BadRequest, match="ambiguous"):
        store.get(fp[0])
    assert store.get(fp).fingerprint == fp


def test_list_is_sorted_by_upload_time(store: ImageStore, tmp_path: Path) -> None:
    fps = [
        store.import_tarball(make_image(tmp_path / f"i{i}", creation_date=i)).fingerprint for i in range(3)
    ]
    assert [r.fingerprint for r in store.list()] == fps


def test_delete_removes_everything(store: ImageStore, tmp_path: Path) -> None:
    keep = store.import_tarball(make_image(tmp_path / "keep", creation_date=1), ["keep"])
    before = tree(store.root)
    gone = store.import_tarball(make_image(tmp_path / "gone", creation_date=2), ["gone", "gone2"])
    store.delete(gone.fingerprint)
    with pytest.raises(NotFound):
        store.get(gone.fingerprint)
    assert [a["name"] for a in store.alias_list()] == ["keep"]
    assert tree(store.root) == before
    assert store.get("keep").fingerprint == keep.fingerprint
    with pytest.raises(NotFound):
        store.delete(gone.fingerprint)


def test_alias_lifecycle_and_errors(store: ImageStore, tmp_path: Path) -> None:
    fp = store.import_tarball(make_image(tmp_path / "a")).fingerprint
    store.alias_create("web", fp, "web servers")
    assert store.alias_get("web") == {"name": "web", "description": "web servers", "target": fp}
    assert store.get(fp).aliases == [{"name": "web", "description": "web servers"}]
    with pytest.raises(Conflict, match="web"):
        store.alias_create("web", fp)
    with pytest.raises(BadRequest, match="invalid image alias"):
        store.alias_create("../etc", fp)
    with pytest.raises(NotFound):
        store.alias_create("other", "f" * 64)
    store.alias_delete("web")
    assert store.alias_list() == []
    with pytest.raises(NotFound):
        store.alias_delete("web")
    with pytest.raises(NotFound):
        store.alias_get("web")


def test_import_with_taken_alias_changes_nothing(store: ImageStore, tmp_path: Path) -> None:
    store.import_tarball(make_image(tmp_path / "a", creation_date=1), ["taken"])
    before = tree(store.root)
    upload = make_image(tmp_path / "b", creation_date=2)
    with pytest.raises(Conflict, match="taken"):
        store.import_tarball(upload, ["fresh", "taken"])
    assert tree(store.root) == before
    assert not upload.exists()
    with pytest.raises(BadRequest):
        store.import_tarball(make_image(tmp_path / "c", creation_date=3), ["bad alias"])
    assert tree(store.root) == before


def test_hostile_tarball_leaves_store_unchanged(store: ImageStore, tmp_path: Path) -> None:
    store.import_tarball(make_image(tmp_path / "ok", creation_date=1), ["ok"])
    before = tree(store.root)
    link = tarfile.TarInfo("rootfs/etc/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/shadow"
    upload = make_image(store.upload_dir() / "upload-x", creation_date=2, extra=[link])
    with pytest.raises(BadRequest, match="'rootfs/etc/evil'"):
        store.import_tarball(upload, ["new"])
    assert tree(store.root) == before
    assert [a["name"] for a in store.alias_list()] == ["ok"]


def test_failure_while_unpacking_removes_everything(
    store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(store.root)
    real_extract = store_module.extract_rootfs

    def full_disk(path: Path, dest: Path, **options: object) -> None:
        real_extract(path, dest, **options)  # leave a fully written volume behind, then fail
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "extract_rootfs", full_disk)
    upload = make_image(tmp_path / "a")
    with pytest.raises(InsufficientStorage, match="^no space left on device while unpacking the image$"):
        store.import_tarball(upload, ["x"])
    assert tree(store.root) == before
    assert not upload.exists()
    assert store.alias_list() == []


def test_not_enough_free_space_is_refused_up_front(
    store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(store.root)
    upload = make_image(tmp_path / "a")
    monkeypatch.setattr(store.storage, "free_bytes", lambda: upload.stat().st_size)
    with pytest.raises(InsufficientStorage, match="not enough free space"):
        store.import_tarball(upload)
    assert tree(store.root) == before


def test_restart_keeps_images_and_removes_crash_debris(store: ImageStore, tmp_path: Path) -> None:
    fp = store.import_tarball(make_image(tmp_path / "a"), ["a"]).fingerprint
    debris = "e" * 64
    (store.root / debris).write_bytes(b"half a tarball")
    (store.root / f"{debris}.rootfs" / "bin").mkdir(parents=True)
    again = ImageStore(store.root, store.storage)
    assert [r.fingerprint for r in again.list()] == [fp]
    assert again.get("a").fingerprint == fp
    assert not (store.root / debris).exists()
    assert not (store.root / f"{debris}.rootfs").exists()


@pytest.mark.parametrize("plain", [False, True])
def test_built_busybox_image_imports(store: ImageStore, tmp_path: Path, plain: bool) -> None:
    output = tmp_path / ("busybox.tar" if plain else "busybox.tar.gz")
    args = [str(REPO / "scripts/build-busybox-image")] + (["--plain"] if plain else []) + [str(output)]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    record = store.import_tarball(output, ["busybox"])
    rootfs = store.rootfs("busybox")
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert os.path.islink(rootfs / "sbin/init")
    assert (rootfs / "bin/busybox").stat().st_size > 100_000
    assert (os.stat(rootfs / "tmp").st_mode & 0o7777) == 0o1777
    assert "respawn" not in (rootfs / "etc/inittab").read_text()
    assert record.properties["os"] == "busybox"
    assert record.init == "/sbin/init"
    assert record.to_api()["filename"].endswith(".tar" if plain else ".tar.gz")
