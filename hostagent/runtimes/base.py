"""The runtime driver interface (its records: hostagent/runtimes/records.py; what migrations need of it:
hostagent/runtimes/hooks.py, both re-exported here for the drivers and the API).

Drivers are synchronous (they shell out to runc, btrfs, cp ...); the API layer runs them in worker threads
and serialises state changes per container. Drivers raise :mod:`orchapi.errors` exceptions for every
failure a user can cause (unknown name, wrong state, no space), so the API can answer 4xx with the message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hostagent.runtimes.config import validate_config
from hostagent.runtimes.hooks import LAYOUT_LXD as LAYOUT_LXD
from hostagent.runtimes.hooks import LAYOUT_ROOTFS as LAYOUT_ROOTFS
from hostagent.runtimes.hooks import ExportPlan as ExportPlan
from hostagent.runtimes.hooks import ExportVolume as ExportVolume
from hostagent.runtimes.hooks import ImportStaging as ImportStaging
from hostagent.runtimes.hooks import MigrationHooks
from hostagent.runtimes.records import RUNNING as RUNNING
from hostagent.runtimes.records import STATUS_CODES as STATUS_CODES
from hostagent.runtimes.records import STOPPED as STOPPED
from hostagent.runtimes.records import ContainerRecord as ContainerRecord
from hostagent.runtimes.records import ExecResult as ExecResult
from hostagent.runtimes.records import SnapshotRecord as SnapshotRecord

if TYPE_CHECKING:
    from hostagent.execsession.base import ExecProcess, ExecSpec
    from hostagent.storage.base import StorageDriver

# ------------------------------------------------------------------------------------------ migration


def _nothing() -> None:
    """The rest of a delete that had nothing left to do."""


class Runtime(MigrationHooks, ABC):
    """A container runtime driver. All names passed in are already validated by the API layer."""

    #: short name reported by ``GET /1.0``
    name: str = ""
    #: what this runtime's volumes hold, hence what a btrfs stream must hold (see LAYOUT_*)
    layout: str = LAYOUT_ROOTFS
    #: where container volumes live (free space, clones, temporary snapshots for btrfs sends)
    storage: StorageDriver
    #: the images containers are created from (an :class:`ImageStore` or a store of the same shape)
    images: Any

    def validate_config(self, config: dict[str, Any]) -> dict[str, str]:
        """Check user-given container config (API create/update); returns it with string values."""
        return validate_config(config)

    @property
    @abstractmethod
    def storage_name(self) -> str:
        """Storage backend name (``dir``, ``btrfs`` ...)."""

    @property
    @abstractmethod
    def transfer_methods(self) -> tuple[str, ...]:
        """Transfer methods this runtime's storage supports, best first."""

    @abstractmethod
    def recover(self) -> None:
        """Reconcile recorded state with reality after an agent restart; clean up half-done work."""

    @abstractmethod
    def list(self) -> list[ContainerRecord]:
        """All containers, sorted by name."""

    @abstractmethod
    def get(self, name: str) -> ContainerRecord:
        """One container with its live status; :class:`NotFound` if missing."""

    @abstractmethod
    def create(self, name: str, image_fingerprint: str, config: dict[str, str]) -> ContainerRecord:
        """Create a stopped container from an image. :class:`Conflict` if the name exists.

        Must leave nothing behind on failure.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete a stopped container and its snapshots. :class:`Conflict` if it is running."""

    def delete_aside(self, name: str) -> Callable[[], None]:
        """Delete ``name`` as far as anyone can tell, and return what is left to do.

        The name must be gone (free for a new container, absent from listings) when this returns; the
        returned call removes the files, and may run later, in the background. A crash before it ran
        must not lose that work: the next start finishes it. A move's source is acknowledged deleted
        after this part, so the removal of a large tree does not hold up the job. This default deletes
        everything at once.
        """
        self.delete(name)
        return _nothing

    @abstractmethod
    def start(self, name: str) -> None:
        """Start a stopped container. :class:`Conflict` if it is running already."""

    @abstractmethod
    def stop(self, name: str, force: bool = False, timeout: float = 30.0) -> None:
        """Stop a running container: a clean shutdown signal, then a kill after ``timeout``.

        ``force`` kills at once.
        """

    @abstractmethod
    def state(self, name: str) -> dict[str, Any]:
        """Live state: status, status_code, pid, processes, disk usage."""

    @abstractmethod
    def exec(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        cwd: str,
        stdin: bytes | None,
        timeout: float | None,
    ) -> ExecResult:
        """Run ``command`` inside a running container and collect its output."""

    @abstractmethod
    def exec_process(self, name: str, spec: ExecSpec) -> ExecProcess:
        """A streaming exec of ``spec`` in running container ``name``, not started yet (the session
        starts it once the client's websockets are connected)."""

    @abstractmethod
    def console_process(self, name: str, width: int, height: int) -> ExecProcess:
        """An attachment to running container ``name``'s console, as the exec session's terminal
        (ending it detaches; the container runs on)."""

    @abstractmethod
    def console_log(self, name: str) -> bytes:
        """The console's recent output (bounded)."""

    @abstractmethod
    def update_config(self, name: str, config: dict[str, str]) -> ContainerRecord:
        """Replace user-settable config keys (already validated)."""

    @abstractmethod
    def snapshot_create(self, name: str, snapshot: str) -> SnapshotRecord:
        """Take a read-only snapshot. :class:`Conflict` if the snapshot name exists."""

    @abstractmethod
    def snapshot_delete(self, name: str, snapshot: str) -> None:
        """Delete one snapshot."""

    @abstractmethod
    def snapshot_restore(self, name: str, snapshot: str) -> None:
        """Replace the container's rootfs with the snapshot's content (container must be stopped)."""
