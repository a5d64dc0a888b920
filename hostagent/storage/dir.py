"""Plain-directory volumes: the fallback for any filesystem.

Clones and snapshots are full copies made by ``cp -a --reflink=auto``: GNU cp preserves owners, modes,
hard links, ACLs and xattrs (file capabilities included) and shares extents where the filesystem can
(XFS, btrfs), which no pure-Python copy does as well.

Snapshots stay writable on purpose. The agent runs as root, and root ignores permission bits, so a
``chmod -w`` would protect nothing while changing the very modes a restore must reproduce (the snapshot
root's mode would come back read-only). Only ``chattr +i`` would really protect them, and that is
filesystem-specific and makes every delete need an extra recursive pass. Nothing in the agent writes to
a snapshot; that convention is the protection.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hostagent.storage.base import StorageDriver
from orchapi.errors import Conflict, InsufficientStorage, InternalError, NotFound

_ENOSPC = "no space left on device"


def run_tool(argv: list[str], what: str, cleanup: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a storage command; on failure remove ``cleanup`` and raise with the tool's error in one line.

    "No space left on device" becomes :class:`InsufficientStorage` (HTTP 507), anything else
    :class:`InternalError`: users cause the first by filling the disk, not the second.
    """
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise InternalError(f"{what}: {argv[0]} is not installed") from exc
    if proc.returncode == 0:
        return proc
    if cleanup is not None:
        _cleanup(cleanup)
    lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    detail = lines[-1] if lines else f"exit status {proc.returncode}"
    if any(_ENOSPC in line.lower() for line in lines):
        raise InsufficientStorage(
            f"{what}: no space left on the agent's storage", "free space or delete some"
        )
    raise InternalError(f"{what}: {detail}")


def _cleanup(path: Path) -> None:
    """Best-effort removal of a partial copy; the caller is already reporting the real error."""
    try:
        StorageDriver._remove_tree(path)
    except OSError:
        pass


def check_copy_paths(source: Path, path: Path) -> None:
    """Refuse to copy from a missing volume or over an existing one (which cp would nest into)."""
    if not os.path.isdir(source):
        raise NotFound(f"volume {source} does not exist")
    if os.path.lexists(path):
        raise Conflict(f"volume {path} exists already")


def copy_tree(source: Path, path: Path, what: str) -> None:
    """``cp -a --reflink=auto`` ``source`` to ``path``; a failed copy leaves nothing behind.

    ``-T`` makes cp treat ``path`` as the copy itself even if it exists (then it fills it), never as a
    directory to copy into.
    """
    created = not os.path.lexists(path)
    argv = ["cp", "-a", "--reflink=auto", "-T", "--", str(source), str(path)]
    try:
        run_tool(argv, what)
    except BaseException:  # also on KeyboardInterrupt: a partial copy must never look like a volume
        if created:
            _cleanup(path)
        raise


class DirDriver(StorageDriver):
    """Volumes as ordinary directories."""

    name = "dir"
    transfer_methods = ("rsync", "tar")

    def create_volume(self, path: Path) -> None:
        if os.path.lexists(path):
            raise Conflict(f"volume {path} exists already")
        os.mkdir(path, 0o755)

    def clone_volume(self, source: Path, path: Path) -> None:
        check_copy_paths(source, path)
        copy_tree(source, path, f"copying {source.name} to {path}")

    def snapshot_volume(self, source: Path, path: Path) -> None:
        check_copy_paths(source, path)
        copy_tree(source, path, f"snapshotting {source} to {path}")

    def delete_volume(self, path: Path) -> None:
        self._remove_tree(path)
