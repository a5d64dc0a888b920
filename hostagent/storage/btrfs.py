"""Btrfs volumes: every volume is a subvolume, so clones and snapshots are instant copy-on-write.

A source that is a plain directory (e.g. an image unpacked before the data dir moved to btrfs) cannot be
snapshotted; it is copied into a fresh subvolume instead, so callers never need to care.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hostagent.storage import filesystem_type
from hostagent.storage.base import StorageDriver
from hostagent.storage.dir import check_copy_paths, copy_tree, run_tool
from orchapi.errors import Conflict, InternalError

#: inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID)
_SUBVOL_ROOT_INO = 256


def is_subvolume(path: Path) -> bool:
    """Whether ``path`` is the root of a btrfs subvolume (not just a directory inside one)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_ino != _SUBVOL_ROOT_INO:
        return False
    return filesystem_type(path) == "btrfs"


def _nested_subvolumes(path: Path) -> list[Path]:
    """Subvolumes below ``path`` (not ``path`` itself), deepest first, so they can be deleted in order."""
    found: list[Path] = []
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if st.st_ino == _SUBVOL_ROOT_INO and stat.S_ISDIR(st.st_mode):
                found.append(p)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


class BtrfsDriver(StorageDriver):
    """Volumes as btrfs subvolumes, snapshots as read-only subvolume snapshots."""

    name = "btrfs"
    transfer_methods = ("btrfs", "rsync", "tar")

    def create_volume(self, path: Path) -> None:
        if os.path.lexists(path):
            raise Conflict(f"volume {path} exists already")
        run_tool(["btrfs", "subvolume", "create", "--", str(path)], f"creating volume {path}")

    def clone_volume(self, source: Path, path: Path) -> None:
        check_copy_paths(source, path)
        what = f"copying {source} to {path}"
        if is_subvolume(source):
            run_tool(["btrfs", "subvolume", "snapshot", "--", str(source), str(path)], what)
        else:
            self._copy_into_subvolume(source, path, what)

    def snapshot_volume(self, source: Path, path: Path) -> None:
        check_copy_paths(source, path)
        what = f"snapshotting {source} to {path}"
        if is_subvolume(source):
            run_tool(["btrfs", "subvolume", "snapshot", "-r", "--", str(source), str(path)], what)
            return
        self._copy_into_subvolume(source, path, what)
        try:
            self._set_readonly(path, True)
        except BaseException:
            self.delete_volume(path)
            raise

    def seal_volume(self, path: Path) -> None:
        if is_subvolume(path) and not self._is_readonly(path):
            self._set_readonly(path, True)

    def delete_volume(self, path: Path) -> None:
        if not os.path.lexists(path):
            return
        if not is_subvolume(path):
            # a plain directory may still hold subvolumes (e.g. a container dir): delete those first
            for sub in _nested_subvolumes(path):
                self._delete_subvolume(sub)
            self._remove_tree(path)
            return
        self._delete_subvolume(path)

    def _delete_subvolume(self, path: Path) -> None:
        argv = ["btrfs", "subvolume", "delete", "--", str(path)]
        try:
            run_tool(argv, f"deleting volume {path}")
            return
        except InternalError:
            pass
        # read-only, or holding nested subvolumes (a container may create some): clear both, retry
        if self._is_readonly(path):
            self._set_readonly(path, False)
        for sub in _nested_subvolumes(path):
            self._delete_subvolume(sub)
        run_tool(argv, f"deleting volume {path}")

    @staticmethod
    def _is_readonly(path: Path) -> bool:
        out = run_tool(["btrfs", "property", "get", "-ts", str(path), "ro"], f"reading properties of {path}")
        return out.stdout.strip() == "ro=true"

    @staticmethod
    def _set_readonly(path: Path, readonly: bool) -> None:
        value = "true" if readonly else "false"
        run_tool(["btrfs", "property", "set", "-ts", str(path), "ro", value], f"setting {path} ro={value}")

    def _copy_into_subvolume(self, source: Path, path: Path, what: str) -> None:
        self.create_volume(path)
        try:
            copy_tree(source, path, what)
        except BaseException:
            self.delete_volume(path)
            raise
