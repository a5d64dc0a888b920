"""Suspended imports of the native runtime: a staging dir kept aside after a resumable failure.

``containers/.creating-<name>-<hex>`` (a staging dir in use) becomes ``containers/.suspended-<name>`` when
its transfer is suspended, and goes back to a fresh ``.creating-`` name when a later attempt resumes it;
one rename each way, so a crash at any point leaves either a staging dir (which recover() suspends again
if it has a journal) or a suspended one. The journal inside (hostagent/runtimes/resume.py) says what the
dir holds; this module only moves dirs and removes volumes.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from hostagent.runtimes import modes
from hostagent.runtimes.base import ImportStaging
from hostagent.runtimes.native.base import CREATING, ROOTFS, SNAPSHOTS, SUSPENDED, NativeBase
from hostagent.runtimes.resume import RESUME, fsync_dir

log = logging.getLogger(__name__)


class SuspendedImports(NativeBase):
    resumable_imports = True

    def _suspended_dir(self, name: str) -> Path:
        return self.containers_dir / f"{SUSPENDED}{name}"

    def import_suspend(self, staging: ImportStaging) -> bool:
        if staging.path.parent != self.containers_dir or not staging.path.name.startswith(CREATING):
            return False
        with self._locked(staging.name):
            aside = self._suspended_dir(staging.name)
            self._delete_tree(aside)  # an older attempt's: this one is newer
            os.rename(staging.path, aside)
            fsync_dir(self.containers_dir)
        return True

    def import_resume(self, name: str, refresh: bool) -> ImportStaging | None:
        existing = self.import_check(name, refresh)  # type: ignore[attr-defined]
        with self._locked(name):
            aside = self._suspended_dir(name)
            if not aside.is_dir():
                return None
            path = self.containers_dir / f"{CREATING}{name}-{secrets.token_hex(4)}"
            os.rename(aside, path)
            modes.private_dir(path / SNAPSHOTS)
        return ImportStaging(name, path, existing, self.container_dir(name) if existing is not None else None)

    def import_keep_only(self, staging: ImportStaging, keep: set[str | None]) -> None:
        snapshots = staging.path / SNAPSHOTS
        for entry in sorted(os.listdir(snapshots)) if snapshots.is_dir() else []:
            if entry not in keep:
                self._delete_tree(snapshots / entry)
        if None not in keep:
            self.storage.delete_volume(staging.volume(None))
        for leftover in staging.path.glob("recv-*"):  # a half-received btrfs volume
            self.storage.delete_volume(leftover / ROOTFS)
            self.storage.delete_volume(leftover)

    def suspended_imports(self) -> dict[str, Path]:
        return {
            entry[len(SUSPENDED) :]: self.containers_dir / entry
            for entry in sorted(os.listdir(self.containers_dir))
            if entry.startswith(SUSPENDED)
        }

    def discard_suspended(self, name: str) -> bool:
        with self._locked(name):
            aside = self._suspended_dir(name)
            if not aside.is_dir():
                return False
            log.info("removing suspended import %s", aside)
            self._delete_tree(aside)
            return True

    def _recover_staging(self, entry: str) -> bool:
        """At start: suspend a staging dir a crash left if its journal says what it holds; whether it
        was kept (recover() removes it otherwise)."""
        path = self.containers_dir / entry
        name = entry[len(CREATING) : -9] if len(entry) > len(CREATING) + 9 else ""
        if not name or not (path / RESUME).is_file():
            return False
        staging = ImportStaging(name, path)
        log.info("suspending interrupted import %s as %s", path, self._suspended_dir(name))
        return self.import_suspend(staging)
