"""One LXD storage pool seen as files: where LXD keeps a container's volumes, and how the agent makes and
removes volumes there (directories on ``dir`` pools, subvolumes on ``btrfs`` pools).

LXD's layout (default project): ``containers/<name>/`` holds ``rootfs/``, ``metadata.yaml`` and
``backup.yaml``; ``containers-snapshots/<name>/<snapshot>/`` the same for each snapshot (read-only
subvolumes on btrfs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hostagent.storage.btrfs import is_subvolume
from hostagent.storage.dir import run_tool

ROOTFS = "rootfs"
CONTAINERS = "containers"
SNAPSHOTS = "containers-snapshots"
#: inode number of every btrfs subvolume's root directory
_SUBVOL_ROOT_INO = 256


class Pool:
    """An LXD storage pool: its API description and its directory (``<LXD_DIR>/storage-pools/<name>``)."""

    def __init__(self, lxd_dir: Path, info: dict[str, Any]) -> None:
        self.info = info
        self.name = str(info["name"])
        self.driver = str(info.get("driver"))
        self.dir = Path(lxd_dir) / "storage-pools" / self.name

    def volume_dir(self, name: str, snapshot: str | None = None) -> Path:
        if snapshot is None:
            return self.dir / CONTAINERS / name
        return self.dir / SNAPSHOTS / name / snapshot

    def make_volume(self, path: Path) -> None:
        """An empty volume at ``path`` (nothing if it exists)."""
        if os.path.lexists(path):
            return
        if self.driver == "btrfs":
            run_tool(["btrfs", "subvolume", "create", "--", str(path)], f"creating volume {path}")
        else:
            path.mkdir(mode=0o700)  # LXD gives it its own mode when it adopts and starts it

    @staticmethod
    def snapshot(source: Path, path: Path, readonly: bool) -> None:
        """A btrfs snapshot of the subvolume ``source`` at ``path``."""
        argv = ["btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), "--", str(source), str(path)]
        run_tool(argv, f"snapshotting {source.name} to {path}")

    def remove(self, path: Path) -> None:
        """Remove a tree that may hold (read-only) btrfs subvolumes."""
        if not os.path.lexists(path):
            return
        if self.driver == "btrfs":
            for sub in sorted(_subvolumes(path), key=lambda p: len(p.parts), reverse=True):
                subprocess.run(
                    ["btrfs", "property", "set", "-ts", str(sub), "ro", "false"], capture_output=True
                )
                subprocess.run(["btrfs", "subvolume", "delete", str(sub)], capture_output=True)
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                run_tool(["rm", "-rf", "--one-file-system", "--", str(path)], f"removing {path}")


def _subvolumes(path: Path) -> list[Path]:
    found = [path] if is_subvolume(path) else []
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            if os.lstat(p).st_ino == _SUBVOL_ROOT_INO:
                found.append(p)
    return found
