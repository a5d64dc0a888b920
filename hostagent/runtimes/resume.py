"""The resume journal of an import: what an interrupted transfer keeps, so that the next attempt sends less.

A staging dir (see :class:`~hostagent.runtimes.base.ImportStaging`) that is receiving a container holds
``resume.json``: the *key* the transfer is pinned to (the source's certificate fingerprint, the source
container and its creation date, the id map its files use, its base image, the method, whether it is a
refresh), the volumes already received, verified, checked and placed (each with its snapshot's name and
creation date), the volume being received, and when the journal expires. It is written (fsync'd, then
renamed) before the first volume, before each volume and after each verified one, so even a SIGKILL of
the agent leaves a journal that says exactly what the staging dir holds.

A *resumable* failure (the peer went away, a timeout, an agent restart) suspends the staging dir instead
of removing it: the runtime renames it aside (one suspended import per container name) until the journal
expires. The next pull of that container whose key matches reuses the volumes it lists and continues the
interrupted one (hostagent/migration/target/resume.py). Nothing here is trusted beyond what it proves:
every reused volume was verified against the source's manifest and checked against the host's policy
before it was journalled, and its snapshot (name and creation date) must still be the source's.

This module only reads and writes the journal; the runtimes move the dirs, the migration decides.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostagent.jsonfile import write_json
from orchapi.errors import BadRequest

#: the journal's file name inside a staging dir
RESUME = "resume.json"
#: how long a suspended import is kept, a server config key (``24h``, ``30m``, ``90s``, ``3600``, ``off``)
TTL_KEY = "migration.resume_ttl"
DEFAULT_TTL = 24 * 3600
_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds a suspended import is kept ("" is the default; ``off`` or 0: never kept, every
    interrupted transfer starts over); :class:`BadRequest` for anything else."""
    if not text:
        return DEFAULT_TTL
    if text.strip().lower() == "off":
        return 0
    match = _TTL.match(text)
    if match is None:
        raise BadRequest(
            f"{text!r} is not a duration", "write it like 24h, 30m, 90s or 3600 (seconds), or off"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def configured_ttl(server_config: dict[str, str]) -> int:
    """The stored TTL (an unreadable one falls back to the default: it was checked when it was set)."""
    try:
        return parse_ttl(server_config.get(TTL_KEY, ""))
    except BadRequest:
        return DEFAULT_TTL


def _volume(entry: Any) -> tuple[str | None, str] | None:
    """A journalled volume as ``(snapshot, created_at)``; None if the entry is malformed."""
    if not isinstance(entry, dict):
        return None
    snapshot, created = entry.get("snapshot"), entry.get("created_at")
    if (snapshot is not None and not isinstance(snapshot, str)) or not isinstance(created, str):
        return None
    return snapshot, created


@dataclass
class Journal:
    """The resume journal of one staging dir."""

    staging: Path
    key: dict[str, Any]
    ttl: int = DEFAULT_TTL
    #: the volumes received, verified and placed, in the order they came: (snapshot, created_at, bytes)
    done: list[tuple[str | None, str, int]] = field(default_factory=list)
    #: the volume being received (its files may be half there), or None
    current: tuple[str | None, str] | None = None
    expires: float = 0.0

    @classmethod
    def load(cls, staging: Path) -> Journal | None:
        """The journal in ``staging``; None if there is none or it cannot be read (then nothing in the
        dir can be vouched for)."""
        try:
            data = json.loads((staging / RESUME).read_text(encoding="utf-8"))
            key, expires = data["key"], float(data["expires"])
            done = []
            for entry in data["done"]:
                volume = _volume(entry)
                if volume is None or not isinstance(entry.get("bytes", 0), int):
                    return None
                done.append((volume[0], volume[1], int(entry.get("bytes", 0))))
            current = _volume(data.get("current")) if data.get("current") is not None else None
            ttl = int(data.get("ttl", DEFAULT_TTL))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(key, dict):
            return None
        return cls(staging, key, ttl, done, current, expires)

    def save(self) -> None:
        """Write the journal durably, its expiry pushed to now + TTL."""
        self.expires = time.time() + self.ttl
        record = {
            "key": self.key,
            "ttl": self.ttl,
            "done": [{"snapshot": s, "created_at": c, "bytes": b} for s, c, b in self.done],
            "current": None
            if self.current is None
            else {"snapshot": self.current[0], "created_at": self.current[1]},
            "expires": self.expires,
        }
        write_json(self.staging / RESUME, record)
        fsync_dir(self.staging)

    def begin(self, snapshot: str | None, created_at: str) -> None:
        self.current = (snapshot, created_at)
        self.save()

    def placed(self, snapshot: str | None, created_at: str, size: int) -> None:
        self.done.append((snapshot, created_at, size))
        self.current = None
        self.save()

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires

    def describe(self, name: str) -> dict[str, Any]:
        """What ``GET /1.0/suspended-imports`` shows of it."""
        return {
            "name": name,
            "source": self.key.get("source_name", ""),
            "method": self.key.get("method", ""),
            "volumes_done": [("rootfs" if s is None else s) for s, _, _ in self.done],
            "bytes_done": sum(b for _, _, b in self.done),
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires)),
        }


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def suspended(runtime: Any) -> list[tuple[str, Path, Journal | None]]:
    """The runtime's suspended imports with their journals (None: unreadable), by name."""
    return [(name, path, Journal.load(path)) for name, path in runtime.suspended_imports().items()]


def collect_expired(runtime: Any, now: float | None = None) -> list[str]:
    """Remove the suspended imports whose journal expired (or cannot be read); their names. Called at
    the agent's start and periodically, so nothing outlives its TTL by more than the period."""
    gone = []
    for name, _, journal in suspended(runtime):
        if journal is None or journal.expired(now):
            if runtime.discard_suspended(name):
                gone.append(name)
    return gone
