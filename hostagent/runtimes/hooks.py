"""What migrations need from a runtime driver, and the records they pass: the volumes a source exports
(:class:`ExportPlan`), the staging dir a target receives into (:class:`ImportStaging`), and the hooks
(:class:`MigrationHooks`, a base class of every :class:`~hostagent.runtimes.base.Runtime`), resume's
among them (hostagent/runtimes/resume.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostagent.runtimes.config import import_config_native
from hostagent.runtimes.records import ContainerRecord, SnapshotRecord
from orchapi.errors import BadRequest


@dataclass
class ExportVolume:
    """One volume a migration sends: a snapshot, or the container's rootfs (``snapshot`` None)."""

    snapshot: str | None
    path: Path
    #: what ``btrfs send`` sends when it is not ``path`` itself (LXD: the volume holding ``rootfs/``)
    subvolume: Path | None = None


#: volume layouts: a bare root filesystem (native), or LXD's volume with ``rootfs/`` and metadata files
LAYOUT_ROOTFS = "rootfs"
LAYOUT_LXD = "lxd"


@dataclass
class ExportPlan:
    """What a source sends for one container: its record and its volumes, oldest snapshot first."""

    name: str
    created_at: str
    base_image: str
    architecture: str
    config: dict[str, str]
    init: str
    #: the id map the volumes' owners are shifted into (``IdMap.to_json()``), None for privileged
    idmap: dict[str, int] | None
    #: the snapshots the target will record (none when copying from a snapshot, or instance only)
    snapshots: list[SnapshotRecord]
    volumes: list[ExportVolume]
    #: what a btrfs stream of a volume holds (see LAYOUT_*)
    layout: str = LAYOUT_ROOTFS
    #: runtime-specific description of the instance (LXD: profiles, devices, snapshots' config ...)
    instance: dict[str, Any] | None = None
    #: when only some of the agent's methods can send this container (LXD: one on another pool, or with
    #: a custom id map, can only go by lxd-migration); None: all of them
    only_methods: tuple[str, ...] | None = None
    #: why ``only_methods`` is set, for the error when the target supports none of them
    only_reason: str = ""

    def methods(self, offered: tuple[str, ...]) -> list[str]:
        """The agent's methods that can send this container."""
        return [m for m in offered if self.only_methods is None or m in self.only_methods]


@dataclass
class ImportStaging:
    """A container being received: everything lives in ``path`` until the commit.

    Volumes are at ``path/rootfs`` and ``path/snapshots/<name>/rootfs``. ``existing`` is the internal
    record of the container a refresh updates (None for a new container).
    """

    name: str
    path: Path
    existing: dict[str, Any] | None = None
    #: the directory of the container a refresh updates (same layout as ``path``)
    existing_dir: Path | None = None

    def volume(self, snapshot: str | None) -> Path:
        return _volume(self.path, snapshot)

    def existing_volume(self, snapshot: str | None) -> Path:
        """A volume of the container a refresh updates (left untouched until the commit)."""
        assert self.existing_dir is not None
        return _volume(self.existing_dir, snapshot)


def _volume(root: Path, snapshot: str | None) -> Path:
    return root / "rootfs" if snapshot is None else root / "snapshots" / snapshot / "rootfs"


class MigrationHooks:
    """What migrations need from a runtime driver (the native runtime implements it; see native/migration.py).

    Source side: :meth:`export_plan` and a scratch dir for temporary read-only snapshots. Target side:
    :meth:`import_check` before connecting, :meth:`import_begin` for the staging dir, a volume per
    transferred volume (:meth:`import_prefill`, :meth:`import_receive_dir`, :meth:`import_place`), then
    :meth:`import_commit` (all or nothing) or :meth:`import_abort`. Leftover staging and scratch dirs are
    removed by :meth:`Runtime.recover` after a crash.
    """

    def _unsupported(self) -> Exception:
        return BadRequest(f"runtime {getattr(self, 'name', '?')} does not support migrations")

    def export_plan(self, name: str, snapshot: str | None, instance_only: bool) -> ExportPlan:
        """The volumes to send. :class:`Conflict` if the container runs and no snapshot is named."""
        raise self._unsupported()

    def export_scratch(self, name: str) -> Path:
        """A new directory (on the data dir's filesystem) for temporary snapshots of an export."""
        raise self._unsupported()

    def export_scratch_remove(self, path: Path) -> None:
        raise self._unsupported()

    def import_config(self, container: dict[str, Any], instance: dict[str, Any] | None) -> dict[str, str]:
        """The config a received container gets here, checked before any byte moves.

        ``container`` is the header's (``config``, ``architecture`` ...), ``instance`` the source
        runtime's own description (None from native sources). Refuses what this runtime cannot honour.
        """
        devices = (instance or {}).get("devices") or {}
        extra = sorted(
            name
            for name, d in devices.items()
            if not (isinstance(d, dict) and d.get("type") == "disk" and d.get("path") == "/")
        )
        if extra:
            raise BadRequest(
                f"the native runtime cannot honour the container's device(s) {', '.join(extra)}",
                "remove them on the source first, or move the container to an LXD host",
            )
        return import_config_native(container.get("config") or {})

    def import_check(self, name: str, refresh: bool) -> dict[str, Any] | None:
        """Conflict unless the name is free (refresh: or names a stopped container, returned)."""
        raise self._unsupported()

    def import_begin(self, name: str, refresh: bool) -> ImportStaging:
        raise self._unsupported()

    def import_prefill(
        self,
        staging: ImportStaging,
        snapshot: str | None,
        base: Path | None,
        base_idmap: dict[str, int] | None,
        image: str | None,
        idmap: dict[str, int] | None,
    ) -> Path:
        """Make the staging volume for ``snapshot``: a clone of ``base`` (re-shifted from ``base_idmap``),
        else of ``image``'s rootfs, else empty; its owners use ``idmap`` (the source's)."""
        raise self._unsupported()

    def import_receive_dir(self, staging: ImportStaging, snapshot: str | None) -> Path:
        """An empty directory in the staging dir to receive a whole volume into (btrfs receive): the
        volume must arrive there named ``rootfs``."""
        raise self._unsupported()

    def import_place(self, staging: ImportStaging, snapshot: str | None, received: Path) -> None:
        """Put a verified volume in its place (and make snapshot volumes read-only where possible)."""
        raise self._unsupported()

    def import_commit(
        self, staging: ImportStaging, data: dict[str, Any], source_idmap: dict[str, int] | None
    ) -> ContainerRecord:
        """Make the received container real (atomically for a new one) as a stopped container."""
        raise self._unsupported()

    def import_abort(self, staging: ImportStaging) -> None:
        """Remove everything the import made; the container a refresh targeted is left as it was."""
        raise self._unsupported()

    # resuming an interrupted import (hostagent/runtimes/resume.py); a runtime that cannot keep a staging
    # dir aside answers as if nothing was ever suspended, so its imports start over

    #: whether this runtime keeps interrupted imports aside to resume them (the hooks below)
    resumable_imports: bool = False

    def import_suspend(self, staging: ImportStaging) -> bool:
        """Keep ``staging`` (and its resume journal) aside for a later attempt, replacing any older
        suspended import of the same name; False if this runtime does not resume (abort it then)."""
        return False

    def import_resume(self, name: str, refresh: bool) -> ImportStaging | None:
        """The suspended import of ``name``, back in use as a staging dir (as :meth:`import_begin`
        makes one: :class:`Conflict` where that would refuse); None if there is none."""
        return None

    def import_keep_only(self, staging: ImportStaging, keep: set[str | None]) -> None:
        """Remove every volume of ``staging`` but those of ``keep`` (snapshot names, None: the rootfs),
        and every half-received one."""
        raise self._unsupported()

    def suspended_imports(self) -> dict[str, Path]:
        """The suspended imports: container name -> staging dir."""
        return {}

    def discard_suspended(self, name: str) -> bool:
        """Remove the suspended import of ``name``; whether there was one."""
        return False

    def rename(self, name: str, new_name: str) -> ContainerRecord:
        """Rename a stopped container (same-host moves). :class:`Conflict` if ``new_name`` exists."""
        raise self._unsupported()

    # the lxd-migration method (hostagent/transfer/lxd_migration.py): only LXD runtimes offer it

    def lxd_migration_offer(self, name: str, snapshot: str | None, instance_only: bool) -> dict[str, Any]:
        """Source: start the runtime's own migration; ``{id, operation, secrets, certificate}``."""
        raise self._unsupported()

    def lxd_migration_cancel(self, operation_id: str) -> None:
        raise self._unsupported()

    def volume_paths(self, name: str, snapshots: list[str]) -> list[tuple[str | None, Path]]:
        """The rootfs of each named snapshot, oldest first, then the container's (for verification)."""
        raise self._unsupported()

    def lxd_migration_pull(
        self,
        name: str,
        data: dict[str, Any],
        offer: dict[str, Any],
        refresh: bool,
        progress: Callable[[int], None] | None = None,
        on_operation: Callable[[str], None] | None = None,
    ) -> ContainerRecord:
        """Target: create (or refresh) ``name`` from the source runtime's migration ``offer``;
        ``progress`` gets the bytes moved so far, ``on_operation`` the id of the runtime's operation
        (so that a cancelled job can cancel it)."""
        raise self._unsupported()
