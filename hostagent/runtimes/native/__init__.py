"""The native runtime: one OCI bundle per container, run by runc, volumes from the storage driver.

Layout under ``<data-dir>``::

    containers/<name>/container.json          what the agent knows (ContainerRecord fields + init, idmap)
    containers/<name>/config.json             OCI spec, regenerated at every start
    containers/<name>/rootfs/                 the container's volume
    containers/<name>/snapshots/<s>/rootfs/   read-only snapshot volumes
    containers/<name>/console.log             init's stdout/stderr since the last start
    runc/                                     runc's state dir (``--root``), private to this agent

Every multi-step change is arranged so that a crash leaves either the old or the new state plus
dot-named or suffixed leftovers that :meth:`NativeRuntime.recover` removes: containers are built in
``containers/.creating-*`` and renamed into place, deleted by renaming to ``containers/.deleting-*`` first,
and rootfs replacements are prepared beside the old volume and swapped by rename. Containers received by
a migration are staged in ``containers/.creating-*`` too (a refresh moves its new volumes into the
existing container only after every volume was verified); a source keeps its temporary read-only
snapshots in ``containers/.exporting-*``. An interrupted import that can be resumed waits in
``containers/.suspended-<name>`` until its journal expires (native/suspend.py).
"""

from hostagent.runtimes.native.base import NativeBase
from hostagent.runtimes.native.host import (
    count_processes,
    halt_signal,
    memory_usage,
    resolve_in_root,
    runc_prefix,
    utc_now,
)
from hostagent.runtimes.native.lifecycle import Lifecycle
from hostagent.runtimes.native.migration import Migration
from hostagent.runtimes.native.snapshots import SnapshotsAndRecovery
from hostagent.runtimes.native.suspend import SuspendedImports


class NativeRuntime(Lifecycle, SnapshotsAndRecovery, SuspendedImports, Migration, NativeBase):
    """Containers as runc bundles on the agent's data dir."""


__all__ = [
    "NativeRuntime",
    "count_processes",
    "halt_signal",
    "memory_usage",
    "resolve_in_root",
    "runc_prefix",
    "utc_now",
]
