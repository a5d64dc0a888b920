"""Which of a member's extended attributes are written (the policy's :class:`XattrRule`).

For an unprivileged container's volume two xattrs carry host-level meaning and are checked:

- ``security.capability``: must be a namespaced (v3) capability whose root id is the container's host
  root (hostagent/filecaps.py); a v2 or v1 one would hand its capabilities to any local user who can run
  the file on the host, so it is refused, naming the member, as is any malformed value;
- ``system.posix_acl_access``/``_default``: every named user and group entry must be inside the
  container's id ranges, like the owners (an entry naming a host uid gives a local user access to the
  container's files).

Names and values are bounded as Linux bounds them (255-byte names, 64 KiB values), so what is refused
here never becomes an odd error from ``setxattr``.
"""

from __future__ import annotations

import struct

from hostagent import filecaps
from hostagent.safetar.member import Member
from hostagent.safetar.policy import Policy
from orchapi.errors import BadRequest

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
ACLS = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_VERSION = 2
_ACL_USER, _ACL_GROUP = 0x02, 0x08
_ACL_TAGS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20)  # USER_OBJ USER GROUP_OBJ GROUP MASK OTHER


def admitted(policy: Policy, member: Member) -> dict[str, bytes]:
    """The xattrs to write for ``member`` (refusing those the policy forbids); {} when none are kept."""
    rule = policy.xattrs
    if not rule.keep or not member.xattrs:
        return {}
    for name, value in member.xattrs.items():
        raw = name.encode("utf-8", "surrogateescape")
        if not raw or b"\0" in raw or len(raw) > XATTR_NAME_MAX:
            raise _refuse(policy, member, f"has an invalid xattr name {name[:64]!r}")
        if len(value) > XATTR_SIZE_MAX:
            raise _refuse(
                policy, member, f"has an xattr {name!r} of {len(value)} bytes (at most {XATTR_SIZE_MAX})"
            )
        if rule.capability_rootid is None:
            continue
        if name == filecaps.XATTR:
            why = filecaps.refusal(value, rule.capability_rootid)
            if why:
                raise _refuse(policy, member, why)
        elif name in ACLS:
            _check_acl(policy, member, name, value)
    return dict(member.xattrs)


def _check_acl(policy: Policy, member: Member, name: str, value: bytes) -> None:
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != _ACL_VERSION:
        raise _refuse(policy, member, f"has a malformed ACL ({name})")
    for offset in range(4, len(value), 8):
        tag, _perm, ident = struct.unpack_from("<HHI", value, offset)
        if tag not in _ACL_TAGS:
            raise _refuse(policy, member, f"has a malformed ACL ({name})")
        ids = policy.uids if tag == _ACL_USER else policy.gids if tag == _ACL_GROUP else None
        if ids is not None and ident not in ids:
            what = "uid" if tag == _ACL_USER else "gid"
            raise _refuse(
                policy, member, f"has an ACL entry ({name}) for {what} {ident}, outside the container's ids"
            )


def _refuse(policy: Policy, member: Member, why: str) -> BadRequest:
    return BadRequest(policy.refuse_text(member.name, why))
