"""Where in an archive things may be, and which part of it is written.

- ``image``: LXD's unified tarball. At the top only ``metadata.yaml`` (one regular file), ``rootfs/`` and
  ``templates/`` (directories; templates only hold regular files and directories); only ``rootfs/`` is
  written, as the destination's root; hard links must point into ``rootfs/`` and relative symlinks may
  not climb above it (absolute ones are resolved inside the container, so they are fine).
- ``volume``: the whole stream is one volume, ``.`` its root; symlinks are stored as they are and never
  followed, hard links must point to an earlier file of the stream.
"""

from __future__ import annotations

from hostagent.safetar.member import DIR, FILE, HARDLINK, Member
from hostagent.safetar.policy import Layout, Policy
from orchapi.errors import BadRequest

TOP_LEVEL = ("metadata.yaml", "rootfs", "templates")
_NEEDS = "a unified image tarball needs metadata.yaml and rootfs/"


class LayoutRules:
    """The layout-dependent part of validation, for one archive (it remembers what it saw)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.image = policy.layout is Layout.IMAGE
        #: the part of the archive that is written, and inside which hard links must stay
        self.scope: tuple[str, ...] = ("rootfs",) if self.image else ()
        self.scope_name = "rootfs/" if self.image else "the volume"
        self.has_metadata = False
        self.has_rootfs = False

    def device_refusal(self) -> str:
        if self.image:
            return "is a device node: images may not contain device nodes because containers are unprivileged"
        return "is a device node, and the container is unprivileged"

    def check(self, member: Member, parts: tuple[str, ...], kind: str) -> None:
        """Image layout rules for the member at ``parts`` (already free of ``..`` and empty parts)."""
        if not self.image or not parts:
            return
        name, top = member.name, parts[0]
        refuse = self.policy.refuse_text
        if top not in TOP_LEVEL or (top == "metadata.yaml" and len(parts) > 1):
            raise BadRequest(refuse(name, "is outside metadata.yaml, rootfs/ and templates/"))
        if top == "metadata.yaml":
            if member.kind != FILE or member.segments is not None:
                raise BadRequest(refuse(name, "must be a regular file"))
            if self.has_metadata:
                raise BadRequest(refuse(name, "is a second metadata.yaml"))
            self.has_metadata = True
        elif len(parts) == 1 and kind != DIR:
            raise BadRequest(refuse(name, "must be a directory"))
        elif top == "templates" and (member.kind == HARDLINK or kind not in (FILE, DIR)):
            raise BadRequest(refuse(name, "templates/ may only hold regular files and directories"))
        if top == "rootfs":
            self.has_rootfs = True

    def written(self, parts: tuple[str, ...]) -> tuple[str, ...] | None:
        """Where the member at ``parts`` goes below the destination, or None if it is not written."""
        if not self.image:
            return parts
        if parts and parts[0] == "rootfs":
            return parts[1:]
        return None

    def check_symlink_target(self, member: Member, parts: tuple[str, ...]) -> None:
        """Image: a relative target may not point above ``rootfs/``."""
        target = member.linkname
        if not self.image or target.startswith("/"):
            return
        where = list(parts[1:-1])  # the link's directory, relative to rootfs/
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part != "..":
                where.append(part)
            elif where:
                where.pop()
            else:
                raise BadRequest(
                    self.policy.refuse_text(
                        member.name, f"is a symlink to {target!r}, which points above rootfs/"
                    )
                )

    def complete(self) -> None:
        """After the last member: an image has its metadata and its rootfs."""
        if not self.image:
            return
        if not self.has_metadata:
            raise BadRequest("image has no metadata.yaml", _NEEDS)
        if not self.has_rootfs:
            raise BadRequest("image has no rootfs/ directory", _NEEDS)
