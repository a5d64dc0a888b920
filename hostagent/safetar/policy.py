"""What one tar archive may hold and write: the only thing that differs between the agent's tar readers.

Every tar the agent reads comes from someone it does not trust (a user's image upload, a base image
pulled from a peer, a volume streamed by a peer agent), so one validator and one writer serve them all
(hostagent/safetar/); a :class:`Policy` says what this archive is allowed:

- ``layout``: ``image`` (LXD's unified tarball: ``metadata.yaml``, ``rootfs/``, ``templates/`` at the top;
  only ``rootfs/`` is written; hard links and relative symlinks must stay inside ``rootfs/``) or ``volume``
  (the whole stream is one volume's root);
- ``uids``/``gids``: the owners allowed (None: any, for privileged containers);
- ``devices``: whether device nodes may be made (only for privileged containers: a device node owned by
  a container's root is a way into the host's devices);
- ``xattrs``: which extended attributes are written (see :class:`XattrRule`);
- ``budget``: the most data bytes the archive may write in all (sparse holes are free, data segments are
  not), and ``apparent_limit``: the largest apparent size of one file (a sparse file's length).

Policies are frozen: one is built per archive from what the agent knows (the store's free space, the
migration's id map and allowance), never from what the archive says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hostagent.runtimes.idmap import IdMap

#: ids an image's files may have: an unprivileged container's user namespace maps exactly 65536
IMAGE_ID_RANGE = range(0, 65536)


class Layout(enum.Enum):
    IMAGE = "image"
    VOLUME = "volume"


@dataclass(frozen=True)
class XattrRule:
    """Which xattrs are written.

    ``keep`` False: none (images: their files get owners and modes only). ``keep`` True: all of them,
    except that when ``capability_rootid`` is set, a ``security.capability`` must be a namespaced (v3)
    capability for exactly that host uid (the unprivileged container's host root): anything else is
    refused, naming the member, because a v2 capability is real privilege on the host. POSIX ACLs
    (``system.posix_acl_*``) must then name only ids in the policy's ranges, like owners.
    """

    keep: bool
    capability_rootid: int | None = None

    @classmethod
    def none(cls) -> XattrRule:
        return cls(False)

    @classmethod
    def all(cls) -> XattrRule:
        return cls(True)

    @classmethod
    def namespaced(cls, rootid: int) -> XattrRule:
        return cls(True, rootid)


@dataclass(frozen=True)
class Policy:
    layout: Layout
    uids: range | None
    gids: range | None
    devices: bool
    xattrs: XattrRule
    #: data bytes the archive may write in all (None: only the disk bounds it)
    budget: int | None = None
    #: largest apparent size of one file (None: the destination filesystem's size, when writing)
    apparent_limit: int | None = None
    #: how messages name the archive and its members
    archive: str = "the archive"
    member: str = "member"

    def refuse_text(self, name: str, why: str) -> str:
        return f"{self.member} {name!r} {why}"


def image_policy(budget: int | None = None, apparent_limit: int | None = None) -> Policy:
    """A unified image tarball: ids a container can own, no devices, no xattrs."""
    return Policy(
        layout=Layout.IMAGE,
        uids=IMAGE_ID_RANGE,
        gids=IMAGE_ID_RANGE,
        devices=False,
        xattrs=XattrRule.none(),
        budget=budget,
        apparent_limit=apparent_limit,
        archive="image file",
        member="image member",
    )


def volume_policy(idmap: IdMap | None, allowance: int | None = None) -> Policy:
    """One volume of a container sent by a peer: ``idmap`` is the source's (None: privileged)."""
    wording = {
        "archive": "the tar stream from the source",
        "member": "refusing the tar stream from the source: member",
    }
    if idmap is None:
        return Policy(Layout.VOLUME, None, None, True, XattrRule.all(), budget=allowance, **wording)
    return Policy(
        layout=Layout.VOLUME,
        uids=range(idmap.host_base, idmap.host_base + idmap.size),
        gids=range(idmap.gid_host_base, idmap.gid_host_base + idmap.size),
        devices=False,
        xattrs=XattrRule.namespaced(idmap.host_base),
        budget=allowance,
        **wording,
    )
