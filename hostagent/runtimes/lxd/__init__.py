"""The LXD runtime driver: the agent fronts a real LXD daemon through its REST API on the unix socket.

Containers, snapshots, config, start/stop and exec are LXD's own (``orch list`` and ``lxc list`` show
the same thing). Migrations use orch's transfer engine on LXD's storage directly:

- as a source, the volumes sent are the instance's ``rootfs`` directories in the pool (rsync, tar) or,
  between btrfs pools, the instance's subvolumes (``btrfs send -p`` from snapshot to snapshot);
- as a target, the volumes are filled in a staging dir inside the pool (pre-filled from the base image
  or the previous snapshot, then the delta), laid out exactly as LXD lays out a container
  (``containers/<name>/rootfs`` + ``metadata.yaml`` + ``backup.yaml``, ``containers-snapshots/<name>/
  <snap>/``), moved into the pool in one rename per directory and adopted by LXD's recovery API, which
  creates the instance and its snapshots (with their creation dates) from ``backup.yaml``.

Owners are kept numeric as on disk; the map they are in travels with them and is recorded as
``volatile.last_state.idmap``, so LXD re-shifts on the next start if its own map differs.

Only the ``default`` project and ``dir``/``btrfs`` pools are supported by the orch transfer; other pools
can still move with the ``lxd-migration`` method.
"""

from hostagent.runtimes.lxd.base import EVACUATE_KEY, WORK_DIR, LxdBase
from hostagent.runtimes.lxd.lxd_migration import LxdOwnMigration
from hostagent.runtimes.lxd.source import LxdSource
from hostagent.runtimes.lxd.target import LxdTarget


class LxdRuntime(LxdSource, LxdTarget, LxdOwnMigration, LxdBase):
    """Containers of one LXD daemon, in one storage pool."""


__all__ = ["EVACUATE_KEY", "WORK_DIR", "LxdRuntime"]
