"""User-namespace id maps and shifting a rootfs's file owners into (or out of) one.

An unprivileged container runs in a user namespace where its uid/gid 0..size-1 are host ids
``host_base..host_base+size-1``. Image rootfs trees carry raw ids (0 for root), so before the container can
own its files they are *shifted*: every owner moved by ``host_base``. Toggling ``security.privileged``
shifts them back. This is what LXD does when the kernel offers no idmapped mounts to the runtime; runc 1.1
has none, so shifting on disk is the portable way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostagent import filecaps
from orchapi.errors import BadRequest, InternalError

#: LXD's fallback when /etc/subuid has no range for root
DEFAULT_BASE = 100000
#: a container needs the full 16-bit id space (nobody/nogroup are 65534)
MIN_SIZE = 65536

_CAPS_XATTR = filecaps.XATTR


@dataclass(frozen=True)
class IdMap:
    """Container ids ``0..size-1`` are host uids ``host_base..`` and host gids ``gid_base..``."""

    host_base: int
    size: int
    #: host gid base when /etc/subgid differs from /etc/subuid (None: same as ``host_base``)
    gid_base: int | None = None

    @property
    def gid_host_base(self) -> int:
        return self.host_base if self.gid_base is None else self.gid_base

    def uid_mappings(self) -> list[dict[str, int]]:
        """The OCI ``linux.uidMappings`` entry list."""
        return [{"containerID": 0, "hostID": self.host_base, "size": self.size}]

    def gid_mappings(self) -> list[dict[str, int]]:
        """The OCI ``linux.gidMappings`` entry list."""
        return [{"containerID": 0, "hostID": self.gid_host_base, "size": self.size}]

    def to_json(self) -> dict[str, Any]:
        return {"host_base": self.host_base, "size": self.size, "gid_base": self.gid_host_base}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdMap:
        gid_base = int(data.get("gid_base", data["host_base"]))
        base = int(data["host_base"])
        return cls(base, int(data["size"]), None if gid_base == base else gid_base)


def _root_range(path: Path) -> tuple[int, int] | None:
    """First ``root:start:count`` (or ``0:start:count``) entry of a subuid/subgid file, if any."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in ("root", "0"):
            continue
        try:
            return int(parts[1]), int(parts[2])
        except ValueError:
            continue
    return None


def default_idmap(subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> IdMap:
    """Root's subordinate id range as LXD picks it: /etc/subuid and /etc/subgid, else 100000/65536.

    Raises :class:`InternalError` if the configured range is smaller than 65536, because a container would
    then be unable to own the ids its image uses.
    """
    uids = _root_range(subuid) or (DEFAULT_BASE, MIN_SIZE)
    gids = _root_range(subgid) or uids
    size = min(uids[1], gids[1])
    if size < MIN_SIZE:
        raise InternalError(
            f"root's subordinate id range is too small ({size} ids); need at least {MIN_SIZE}",
            f"give root a range of {MIN_SIZE} in {subuid} and {subgid}",
        )
    return IdMap(uids[0], MIN_SIZE, None if gids[0] == uids[0] else gids[0])


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` including itself, never following symlinks."""
    top = os.lstat(root)
    yield str(root), top
    stack = [str(root)]
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                yield entry.path, st
                if stat.S_ISDIR(st.st_mode):
                    # descend even where st_dev changes: a nested btrfs subvolume is part of the tree
                    stack.append(entry.path)


def _shift_caps(value: bytes, delta_uid: int) -> bytes:
    """Move a ``security.capability`` xattr's root id by ``delta_uid`` (see :mod:`hostagent.filecaps`).

    The kernel only honours file capabilities whose root id is the root of the running namespace, so a
    shifted file must carry a v3 xattr naming the new root (and a v2 one when shifted back to host root),
    or ``ping``-style binaries lose their capabilities.
    """
    return filecaps.shifted(value, delta_uid)


def _read_caps(path: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAPS_XATTR, follow_symlinks=False)
    except OSError:
        # ENODATA: no caps; ENOTSUP: filesystem without xattrs. Either way nothing to preserve.
        return None


def shift_tree(
    path: Path,
    delta_uid: int,
    delta_gid: int,
    uid_range: range | None = None,
    gid_range: range | None = None,
) -> int:
    """Move every owner under ``path`` by ``delta_uid``/``delta_gid``; returns the number of entries.

    ``uid_range``/``gid_range`` are the ids allowed *before* shifting (e.g. ``range(0, 65536)`` when
    shifting into a container). All entries are checked before anything changes, so a refused tree is
    left untouched rather than half shifted. Hard-linked inodes are shifted once. ``chown`` clears setuid,
    setgid and file capabilities, so the mode bits and ``security.capability`` are restored afterwards.
    """
    entries: list[tuple[str, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()
    for p, st in _walk(Path(path)):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if uid_range is not None and st.st_uid not in uid_range:
            raise BadRequest(f"cannot shift {p}: uid {st.st_uid} is outside the allowed range")
        if gid_range is not None and st.st_gid not in gid_range:
            raise BadRequest(f"cannot shift {p}: gid {st.st_gid} is outside the allowed range")
        if st.st_uid + delta_uid < 0 or st.st_gid + delta_gid < 0:
            raise BadRequest(f"cannot shift {p}: id would become negative")
        entries.append((p, st))
    for p, st in entries:
        is_link = stat.S_ISLNK(st.st_mode)
        caps = None if is_link or not stat.S_ISREG(st.st_mode) else _read_caps(p)
        os.lchown(p, st.st_uid + delta_uid, st.st_gid + delta_gid)
        if is_link:
            continue  # Linux has no lchmod; symlink modes are meaningless anyway
        os.chmod(p, stat.S_IMODE(st.st_mode))
        if caps is not None:
            try:
                os.setxattr(p, _CAPS_XATTR, _shift_caps(caps, delta_uid), follow_symlinks=False)
            except OSError:
                pass  # unsupported here: the file keeps working, only without its capabilities
    return len(entries)


def shift_into(path: Path, idmap: IdMap) -> int:
    """Shift a tree with raw ids (0..size-1) so the container described by ``idmap`` owns it."""
    return shift_tree(path, idmap.host_base, idmap.gid_host_base, range(0, idmap.size), range(0, idmap.size))


def shift_out_of(path: Path, idmap: IdMap) -> int:
    """Undo :func:`shift_into`: back to raw ids, e.g. when a container becomes privileged."""
    return shift_tree(
        path,
        -idmap.host_base,
        -idmap.gid_host_base,
        range(idmap.host_base, idmap.host_base + idmap.size),
        range(idmap.gid_host_base, idmap.gid_host_base + idmap.size),
    )
