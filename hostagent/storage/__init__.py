"""Storage drivers: how container and snapshot volumes are made on the agent's data dir.

``base.py`` is the interface; ``dir.py`` and ``btrfs.py`` are the implementations, chosen by
:func:`detect` from the filesystem the data dir lives on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hostagent.storage.base import StorageDriver


def filesystem_type(path: Path) -> str:
    """Name of the filesystem holding ``path`` (e.g. ``btrfs``, ``ext2/ext3``, ``tmpfs``)."""
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def detect(data_dir: Path) -> StorageDriver:
    """The best driver for ``data_dir``: btrfs subvolumes where possible, else plain directories."""
    from hostagent.storage.btrfs import BtrfsDriver
    from hostagent.storage.dir import DirDriver

    if filesystem_type(data_dir) == "btrfs":
        return BtrfsDriver(data_dir)
    return DirDriver(data_dir)
