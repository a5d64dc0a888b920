"""The agent's image store (INTERFACE STUB: to be implemented).

Layout under ``<data-dir>/images/``:
  ``<fingerprint>``            the imported tarball, byte for byte (fingerprint = its SHA-256)
  ``<fingerprint>.json``       ImageRecord fields
  ``<fingerprint>.rootfs/``    unpacked rootfs volume (made by the storage driver; a btrfs subvolume on btrfs)
  ``aliases.json``             alias name -> {target, description}
  ``tmp/``                     uploads in progress (cleaned at start)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostagent.storage.base import StorageDriver


@dataclass
class ImageRecord:
    fingerprint: str
    size: int
    filename: str
    uploaded_at: str
    created_at: str
    architecture: str
    properties: dict[str, str] = field(default_factory=dict)
    aliases: list[dict[str, str]] = field(default_factory=list)  # [{"name":..., "description":...}]
    #: the image's init program, from metadata.yaml (``properties.init``), default /sbin/init
    init: str = "/sbin/init"

    def to_api(self) -> dict[str, Any]:
        raise NotImplementedError


class ImageStore:
    def __init__(self, root: Path, storage: StorageDriver) -> None:
        raise NotImplementedError

    def upload_dir(self) -> Path:
        """Where the API writes uploads in progress (same filesystem as the store, so rename is atomic)."""
        raise NotImplementedError

    def import_tarball(self, path: Path, aliases: list[str] | None = None) -> ImageRecord:
        raise NotImplementedError

    def list(self) -> list[ImageRecord]:
        raise NotImplementedError

    def get(self, ref: str) -> ImageRecord:
        raise NotImplementedError

    def delete(self, fingerprint: str) -> None:
        raise NotImplementedError

    def rootfs(self, fingerprint: str) -> Path:
        raise NotImplementedError

    def tarball_path(self, fingerprint: str) -> Path:
        raise NotImplementedError

    def alias_create(self, name: str, target: str, description: str = "") -> None:
        raise NotImplementedError

    def alias_delete(self, name: str) -> None:
        raise NotImplementedError

    def alias_list(self) -> list[dict[str, str]]:
        raise NotImplementedError

    def alias_get(self, name: str) -> dict[str, str]:
        raise NotImplementedError
