"""Handing a received container over to LXD: staged volumes move into the pool and LXD adopts them.

A container is received into a staging dir inside the pool (same filesystem: every move is a rename),
already in LXD's layout (:class:`LxdStaging`). Adoption then moves the container's volume dir and its
snapshots dir into the pool and asks LXD's recovery API to register them (:mod:`hostagent.lxd.recover`).
A refresh first renames the existing container aside, gives the new one the snapshots the target
already had, adopts it, then deletes the old one.

Each adoption is journalled in the staging dir (``adopting.json``: what moves where, the name the old
container was renamed to) before anything moves, so an agent that dies midway finds, at its next start,
what to put back (:meth:`Adopter.undo`): unless LXD knows the container, its volumes return to staging,
a refresh's kept snapshots to the old container, and the old container gets its name back. Adoptions are
serialised: LXD's recovery adopts every unknown volume of the pool it finds.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from hostagent.lxd import recover
from hostagent.lxd.client import LxdClient, path_of
from hostagent.lxd.pool import CONTAINERS, ROOTFS, SNAPSHOTS, Pool
from hostagent.runtimes.base import ImportStaging
from orchapi.errors import Conflict, NotFound, OrchError

log = logging.getLogger(__name__)

#: the journal of an adoption in progress, in its staging dir
ADOPTING = "adopting.json"


class LxdStaging(ImportStaging):
    """A container being received, already in LXD's layout inside the staging dir."""

    def volume(self, snapshot: str | None) -> Path:
        return self.volume_dir(snapshot) / ROOTFS

    def volume_dir(self, snapshot: str | None) -> Path:
        if snapshot is None:
            return self.path / CONTAINERS / self.name
        return self.path / SNAPSHOTS / self.name / snapshot

    @property
    def snapshots_dir(self) -> Path:
        return self.path / SNAPSHOTS / self.name

    def existing_volume(self, snapshot: str | None) -> Path:
        assert self.existing_dir is not None  # the pool dir
        if snapshot is None:
            return self.existing_dir / CONTAINERS / self.name / ROOTFS
        return self.existing_dir / SNAPSHOTS / self.name / snapshot / ROOTFS


class Adopter:
    """Moves staged containers into one pool and has LXD adopt them, one at a time."""

    def __init__(self, client: LxdClient, pool: Pool) -> None:
        self.client, self.pool = client, pool
        self._lock = threading.Lock()

    def adopt(self, staging: LxdStaging) -> None:
        """Adopt a new container, or swap in a refreshed one (``staging.existing`` set)."""
        with self._lock:
            if staging.existing is None:
                self._adopt_new(staging)
            else:
                self._adopt_refresh(staging)
        (staging.path / ADOPTING).unlink(missing_ok=True)

    def _adopt_new(self, staging: LxdStaging, journal_extra: dict[str, Any] | None = None) -> None:
        name = staging.name
        moves = [
            (staging.volume_dir(None), self.pool.volume_dir(name)),
            (staging.snapshots_dir, self.pool.dir / SNAPSHOTS / name),
        ]
        if os.path.lexists(moves[0][1]) or os.path.lexists(moves[1][1]):
            raise Conflict(f"container {name} already exists (its volume is in LXD pool {self.pool.name})")
        _journal(staging, {**(journal_extra or {}), "name": name, "moves": _pairs(moves)})
        done: list[tuple[Path, Path]] = []
        try:
            for src, dst in moves:
                os.rename(src, dst)
                done.append((src, dst))
            recover.register(self.client, self.pool.info, name)
        except BaseException:
            for src, dst in reversed(done):  # back into staging, which the abort removes
                with suppress(OSError):
                    os.rename(dst, src)
            raise

    def _adopt_refresh(self, staging: LxdStaging) -> None:
        """The old container is renamed aside, the new one adopted, then the old one deleted. Snapshots
        the target already had go from the old container to the new (moved on dir pools; snapshotted on
        btrfs, where a read-only subvolume cannot change directory)."""
        name = staging.name
        aside = f"{name[:40]}-orch-old-{secrets.token_hex(3)}"
        wanted = {p.name for p in staging.snapshots_dir.iterdir()}
        backup = json.loads((staging.volume_dir(None) / "backup.yaml").read_text())
        keep = [
            (self.pool.volume_dir(aside, snap["name"]), staging.snapshots_dir / snap["name"])
            for snap in backup["snapshots"]
            if snap["name"] not in wanted
        ]
        moving = self.pool.driver != "btrfs"
        extra = {"aside": aside, "kept": _pairs(keep) if moving else []}
        _journal(staging, {**extra, "name": name, "moves": []})
        self.client.call("POST", path_of("instances", name), {"name": aside}, timeout=600)
        moved: list[tuple[Path, Path]] = []
        try:
            for src, dst in keep:
                if moving:
                    os.rename(src, dst)
                    moved.append((src, dst))
                else:
                    self.pool.snapshot(src, dst, readonly=True)
            self._adopt_new(staging, extra)
        except BaseException:
            for src, dst in reversed(moved):
                with suppress(OSError):
                    os.rename(dst, src)
            with suppress(OrchError):
                self.client.call("POST", path_of("instances", aside), {"name": name}, timeout=600)
            raise
        try:
            # the moved-out snapshot dirs are missing from the old container: its delete must not mind
            for src, _dst in moved:
                self.pool.make_volume(src)
            self.client.call("DELETE", path_of("instances", aside), timeout=600)
        except OrchError as exc:
            log.warning("refresh of %s: the previous copy %s could not be deleted: %s", name, aside, exc)

    def undo(self, staging_dir: Path) -> None:
        """After a crash: undo the adoption journalled in ``staging_dir``, if LXD did not complete it."""
        journal = staging_dir / ADOPTING
        if not journal.exists():
            return
        record = json.loads(journal.read_text())
        name, aside = record["name"], record.get("aside")
        try:
            self.client.get(path_of("instances", name))
            if aside:
                log.warning(
                    "recovery: refresh of %s was adopted; the previous copy may remain as %s", name, aside
                )
            return
        except NotFound:
            pass
        # every pair went src -> dst: the volumes from staging into the pool, and before them the kept
        # snapshots from the old container into staging; undone in reverse order
        for src, dst in [*reversed(record.get("moves") or []), *reversed(record.get("kept") or [])]:
            if os.path.lexists(dst) and not os.path.lexists(src):
                os.rename(dst, src)
        if aside:
            with suppress(NotFound):
                self.client.call("POST", path_of("instances", aside), {"name": name}, timeout=600)
        log.warning("recovery: undid the interrupted adoption of container %s", name)


def _journal(staging: LxdStaging, record: dict[str, Any]) -> None:
    tmp = staging.path / (ADOPTING + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, staging.path / ADOPTING)


def _pairs(moves: list[tuple[Path, Path]]) -> list[list[str]]:
    return [[str(a), str(b)] for a, b in moves]
