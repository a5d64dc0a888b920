"""Runtime drivers: what runs containers on this host.

``base.py`` defines the interface the API endpoints use; ``native.py`` is the default driver (a rootfs per
container, started through runc). An LXD driver is planned beside it.
"""

from __future__ import annotations

from pathlib import Path

from hostagent.runtimes.base import Runtime


def make_runtime(name: str, data_dir: Path, storage: StorageDriver, images: ImageStore) -> Runtime:  # noqa: F821
    """Build the runtime driver called ``name`` for an agent whose data dir is ``data_dir``."""
    if name == "native":
        from hostagent.runtimes.native import NativeRuntime

        return NativeRuntime(data_dir, storage, images)
    raise ValueError(f"unknown runtime {name!r} (available: native)")
