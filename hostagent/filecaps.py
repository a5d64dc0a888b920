"""File capabilities (the ``security.capability`` xattr): the format, and which ones a container may hold.

The kernel stores ``struct vfs_cap_data``: a little-endian magic (revision in the top byte, the
"effective" flag in bit 0), permitted and inheritable masks, and — from revision 3 — the host uid of the
root of the user namespace the capabilities are valid in ("rootid"). A v2 (or v1) xattr names no
namespace: it grants its capabilities to whoever runs the file in the *initial* namespace, i.e. to any
local user on the host. So an unprivileged container may only hold v3 capabilities whose rootid is its
own host root: exactly what a process inside the container writes, and what shifting a tree into the
container produces (hostagent/runtimes/idmap.py). Every receiver of container data checks with
:func:`refusal`.
"""

from __future__ import annotations

import struct

XATTR = "security.capability"
V1, V2, V3 = 0x01000000, 0x02000000, 0x03000000
REVISION_MASK = 0xFF000000
V1_SIZE, V2_SIZE, V3_SIZE = 12, 20, 24


def parse(value: bytes) -> tuple[int, int | None] | None:
    """``(revision, rootid)`` of a well-formed xattr (rootid 0 for v1/v2), None if malformed."""
    if len(value) < 4:
        return None
    magic = struct.unpack_from("<I", value)[0]
    revision = magic & REVISION_MASK
    if magic & ~REVISION_MASK & ~1:
        return None  # flags other than "effective"
    if revision == V3 and len(value) == V3_SIZE:
        return V3, struct.unpack_from("<I", value, 20)[0]
    if revision == V2 and len(value) == V2_SIZE:
        return V2, 0
    if revision == V1 and len(value) == V1_SIZE:
        return V1, 0
    return None


def refusal(value: bytes, rootid: int | None) -> str | None:
    """Why a container whose host root is ``rootid`` may not hold this xattr; None if it may.

    ``rootid`` None means a privileged container: its capabilities are the host's anyway; 0 means a
    volume whose owners are still the container's raw ids (not yet shifted into its map).
    """
    if rootid is None:
        return None
    parsed = parse(value)
    if parsed is None:
        return "has a malformed file capability (security.capability)"
    revision, root = parsed
    if rootid == 0 and revision in (V2, V3) and root == 0:
        # raw container ids (an LXD container never started, whose files are shifted on first start):
        # the container's root is uid 0 here, and the shift turns its v2 capability into a v3 one
        return None
    if revision != V3:
        return (
            f"has a host-level (v{revision >> 24}) file capability, which would apply outside the "
            "container: an unprivileged container may only hold namespaced (v3) ones"
        )
    if root != rootid:
        return (
            f"has a file capability for the user namespace rooted at host uid {root}, not this "
            f"container's ({rootid})"
        )
    return None


def encode(body: bytes, rootid: int, effective: bool) -> bytes:
    """The xattr for capability masks ``body`` (16 bytes: permitted and inheritable, low and high
    words) valid in the namespace rooted at host uid ``rootid``: v2 for the host's own root, else v3."""
    flags = 1 if effective else 0
    if rootid == 0:
        return struct.pack("<I", V2 | flags) + body
    return struct.pack("<I", V3 | flags) + body + struct.pack("<I", rootid)


def granting(permitted: int, rootid: int = 0, effective: bool = True) -> bytes:
    """An xattr granting the capabilities whose bits are set in ``permitted`` (e.g. ``1 << 13`` for
    cap_net_raw), for the namespace rooted at ``rootid`` (0: the host's)."""
    body = struct.pack("<IIII", permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)
    return encode(body, rootid, effective)


def shifted(value: bytes, delta_uid: int) -> bytes:
    """The xattr for a file whose owners move by ``delta_uid``: a v3 naming the new root, or a v2 when
    the new root is the host's (a file shifted out of a container, into a privileged one)."""
    parsed = parse(value)
    if parsed is None:
        return value
    _revision, root = parsed
    magic = struct.unpack_from("<I", value)[0]
    body = value[4:V2_SIZE] if len(value) >= V2_SIZE else value[4:] + bytes(V2_SIZE - len(value))
    return encode(body, (root or 0) + delta_uid, bool(magic & 1))
