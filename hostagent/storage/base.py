"""The storage driver interface (one file per implementation beside it, as in LXD's storage/drivers).

A *volume* is a directory tree holding one root filesystem: an unpacked image, a container's rootfs or a
snapshot. The runtime decides where volumes live; the driver decides how they are made, so that on btrfs a
clone or snapshot is an instant copy-on-write subvolume and elsewhere a plain recursive copy.
"""

from __future__ import annotations

import os
import shutil
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import NamedTuple


class VolumeUsage(NamedTuple):
    """A volume's size on disk (allocated blocks, hard links once), its entries, and whether a file in
    it has holes (rsync then keeps them with ``--sparse``, which costs ~0.3 CPU-s per GiB when none
    has)."""

    bytes: int
    entries: int
    sparse: bool


class StorageDriver(ABC):
    """Creates, clones, snapshots and deletes volumes under one data dir."""

    #: short name reported by ``GET /1.0`` as the storage backend
    name: str = ""
    #: transfer methods this backend can use, best first (``GET /1.0`` reports them)
    transfer_methods: tuple[str, ...] = ()

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    @abstractmethod
    def create_volume(self, path: Path) -> None:
        """Make an empty writable volume at ``path`` (its parent exists)."""

    @abstractmethod
    def clone_volume(self, source: Path, path: Path) -> None:
        """Make a writable copy of volume ``source`` at ``path``, preserving owners, modes, links, xattrs."""

    @abstractmethod
    def snapshot_volume(self, source: Path, path: Path) -> None:
        """Make a read-only point-in-time copy of volume ``source`` at ``path``."""

    @abstractmethod
    def delete_volume(self, path: Path) -> None:
        """Remove the volume at ``path``; a missing path is not an error (deletes must be idempotent)."""

    def seal_volume(self, path: Path) -> None:  # noqa: B027 - optional, a no-op for most backends
        """Make a finished snapshot volume read-only where the backend can (btrfs); else nothing."""

    def free_bytes(self) -> int:
        """Bytes available to the agent on the data dir's filesystem."""
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize

    def total_bytes(self) -> int:
        """Size of the data dir's filesystem."""
        st = os.statvfs(self.data_dir)
        return st.f_blocks * st.f_frsize

    @staticmethod
    def used_bytes(path: Path) -> int:
        """Bytes a tree uses on disk (allocated blocks, hard links counted once)."""
        return StorageDriver.usage(path).bytes

    @staticmethod
    def usage(path: Path) -> VolumeUsage:
        """What a migration declares of a volume (its bytes on disk and entries) and whether any of its
        files has holes, in one walk."""
        seen: set[tuple[int, int]] = set()
        total = entries = 0
        sparse = False
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                entries += 1
                st = os.lstat(os.path.join(root, name))
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
                # fewer blocks than bytes: holes (or compression/inline data, which are sent as if they
                # were holes: harmless, only slower)
                sparse = sparse or (stat.S_ISREG(st.st_mode) and st.st_blocks * 512 < st.st_size)
        return VolumeUsage(total, entries + 1, sparse)

    @staticmethod
    def _remove_tree(path: Path) -> None:
        """Remove a plain directory tree, tolerating a missing path and read-only dirs."""
        if not os.path.lexists(path):
            return
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
            return
        for root, dirs, _files in os.walk(path):
            for d in dirs:
                p = os.path.join(root, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        os.chmod(path, 0o700)
        shutil.rmtree(path)
