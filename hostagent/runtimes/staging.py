"""Filling a migration's staging volumes: shared by every runtime that receives containers.

A staging dir holds ``rootfs`` and ``snapshots/<name>/rootfs`` (see :class:`ImportStaging`). Each volume
is made from the closest thing the target already has — the volume received just before (the previous
snapshot), the container a refresh updates, or the base image's unpacked rootfs — so that rsync only
sends the difference; its owners are moved into the id map the source's files use, so rsync's numeric
ids compare equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hostagent.images.store import has_image
from hostagent.runtimes.base import ImportStaging
from hostagent.runtimes.idmap import IdMap, shift_into, shift_out_of
from hostagent.storage.base import StorageDriver
from orchapi.errors import InternalError

ROOTFS = "rootfs"


def prefill_volume(
    storage: StorageDriver,
    images: Any,
    staging: ImportStaging,
    snapshot: str | None,
    base: Path | None,
    base_idmap: dict[str, int] | None,
    image: str | None,
    idmap: dict[str, int] | None,
) -> Path:
    """Make the staging volume for ``snapshot``: a clone of ``base`` (re-shifted from ``base_idmap``),
    else of ``image``'s rootfs, else empty; its owners use ``idmap`` (the source's)."""
    dest = staging.volume(snapshot)
    if dest.parent != staging.path:
        dest.parent.mkdir(mode=0o700, exist_ok=True)
    want = IdMap.from_json(idmap) if idmap else None
    try:
        if base is not None:
            storage.clone_volume(base, dest)
            have = IdMap.from_json(base_idmap) if base_idmap else None
            if have != want:
                if have is not None:
                    shift_out_of(dest, have)
                if want is not None:
                    shift_into(dest, want)
        elif image and has_image(images, image):
            storage.clone_volume(images.rootfs(image), dest)
            if want is not None:
                shift_into(dest, want)
        else:
            storage.create_volume(dest)
    except BaseException:
        storage.delete_volume(dest)
        raise
    return dest


def receive_dir(staging: ImportStaging, snapshot: str | None) -> Path:
    """An empty directory for ``btrfs receive``: a received subvolume keeps the name it was sent with
    ("rootfs") and, read-only, cannot be moved to another directory: snapshots are received right where
    they belong, the rootfs beside."""
    if snapshot is None:
        path = staging.path / "recv-rootfs"
        path.mkdir(mode=0o700)
    else:
        path = staging.volume(snapshot).parent
        path.mkdir(mode=0o700)
    return path


def place_received(
    storage: StorageDriver, staging: ImportStaging, snapshot: str | None, received: Path
) -> None:
    """Put a verified volume in its place (snapshot volumes are sealed read-only where possible)."""
    dest = staging.volume(snapshot)
    if received == dest:
        if snapshot is not None:
            storage.seal_volume(dest)
        return
    if snapshot is not None:
        raise InternalError(f"received snapshot {snapshot} is named {received.name!r}, not {ROOTFS!r}")
    storage.clone_volume(received, dest)  # the rootfs must be writable: a snapshot of it
