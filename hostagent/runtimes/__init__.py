"""Runtime drivers: what runs containers on this host.

``base.py`` defines the interface the API endpoints use; ``native/`` runs containers itself (a rootfs
per container, started through runc), ``lxd/`` fronts a local LXD daemon. Each driver brings its
storage driver and image store: the native one on the agent's data dir, LXD's in its storage pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hostagent.runtimes.base import Runtime

RUNTIMES = ("native", "lxd")


@dataclass
class RuntimeOptions:
    """Settings only some runtimes use (``orch-agent --lxd-*``)."""

    lxd_socket: str | None = None
    lxd_dir: Path | None = None
    lxd_pool: str | None = None


def make_runtime(name: str, data_dir: Path, options: RuntimeOptions | None = None) -> Runtime:
    """Build the runtime driver called ``name`` for an agent whose data dir is ``data_dir``."""
    options = options or RuntimeOptions()
    if name == "native":
        from hostagent.images.store import ImageStore
        from hostagent.runtimes.native import NativeRuntime
        from hostagent.storage import detect

        storage = detect(data_dir)
        return NativeRuntime(data_dir, storage, ImageStore(data_dir / "images", storage))
    if name == "lxd":
        from hostagent.lxd.client import find_socket
        from hostagent.runtimes.lxd import LxdRuntime

        return LxdRuntime(data_dir, find_socket(options.lxd_socket), options.lxd_dir, options.lxd_pool)
    raise ValueError(f"unknown runtime {name!r} (available: {', '.join(RUNTIMES)})")
