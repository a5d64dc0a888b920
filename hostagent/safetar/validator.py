"""Judging members one by one, in archive order, against a :class:`Policy`.

Every check depends only on earlier members, so the same validator guards a validation-only pass and an
extraction as it goes. It remembers the kind of every path seen so far in a tree (one step per path
component, so a deep path costs its depth, not its depth squared) and refuses, naming the member:

- absolute names, ``..`` components, NUL bytes, components over 255 bytes, paths over 4096 bytes;
- writing through a symlink or below something that is not a directory, changing the type of a path;
- hard links outside the layout's scope or to anything but an earlier regular file; empty or overlong
  symlink targets (and, for images, relative ones that climb above ``rootfs/``);
- owners outside the policy's ranges, device nodes unless allowed, xattrs the policy forbids;
- sizes: data that would exceed the budget or the free space, and apparent sizes larger than the
  filesystem can hold: at the member's header, before a byte of it is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from hostagent.safetar import xattrs
from hostagent.safetar.layout import LayoutRules
from hostagent.safetar.member import DEVICES, DIR, FILE, HARDLINK, SYMLINK, Member, path_kind
from hostagent.safetar.policy import Policy
from orchapi.errors import BadRequest, InsufficientStorage

NAME_MAX = 255
PATH_MAX = 4096
#: only members this large ask the filesystem for its free space (ENOSPC catches the small ones)
_ASK_DISK_FROM = 64 * 1024

#: (free bytes, total bytes) of the destination's filesystem, asked when a large member comes
Space = Callable[[], tuple[int, int]]


class _Node:
    __slots__ = ("kind", "children")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.children: dict[str, _Node] | None = None


@dataclass
class Verdict:
    """What to do with a member that passed: where it goes (None: not written) and what xattrs."""

    parts: tuple[str, ...]
    written: tuple[str, ...] | None
    xattrs: dict[str, bytes]
    #: a hard link's target, relative to the destination
    link: tuple[str, ...] | None = None


class Validator:
    def __init__(self, policy: Policy, space: Space | None = None) -> None:
        self.policy = policy
        self.layout = LayoutRules(policy)
        self.space = space
        self.root = _Node(DIR)
        #: data bytes admitted so far (what the members write, holes not counted)
        self.used = 0

    def refuse(self, member: Member, why: str) -> BadRequest:
        return BadRequest(self.policy.refuse_text(member.name, why))

    def check(self, member: Member) -> Verdict:
        """Judge ``member``; :class:`BadRequest` (or :class:`InsufficientStorage`) if it is refused."""
        parts = self._parts(member)
        kind = path_kind(member.kind)
        if member.kind in DEVICES and not self.policy.devices:
            raise self.refuse(member, self.layout.device_refusal())
        if not parts:
            if kind != DIR:
                raise self.refuse(
                    member,
                    "must be a directory" if self.layout.image else "is the volume root but not a directory",
                )
            return Verdict(parts, self.layout.written(parts), xattrs.admitted(self.policy, member))
        self._check_ids(member)
        self.layout.check(member, parts, kind)
        parent = self._parent(member, parts)
        previous = parent.children.get(parts[-1]) if parent.children else None
        if previous is not None and previous.kind != kind:
            raise self.refuse(member, f"changes the type of an earlier member from {previous.kind} to {kind}")
        link = None
        if member.kind == HARDLINK:
            link = self.layout.written(self._check_hardlink(member, parts))
        elif member.kind == SYMLINK:
            self._check_symlink(member, parts)
        admitted = xattrs.admitted(self.policy, member)
        if member.kind == FILE:
            self._check_size(member)
        self._record(parts, kind)
        return Verdict(parts, self.layout.written(parts), admitted, link)

    def complete(self) -> None:
        self.layout.complete()

    # ------------------------------------------------------------------------------------------ names

    def _parts(self, member: Member) -> tuple[str, ...]:
        name = member.name
        if "\0" in name:
            raise self.refuse(member, "has a NUL byte in its name")
        if name.startswith("/"):
            raise self.refuse(member, "has an absolute path")
        if len(os.fsencode(name)) > PATH_MAX:
            raise self.refuse(member, f"has a path longer than {PATH_MAX} bytes")
        parts = tuple(c for c in name.split("/") if c not in ("", "."))
        if ".." in parts:
            raise self.refuse(member, "has a '..' path component")
        for part in parts:
            if len(os.fsencode(part)) > NAME_MAX:
                raise self.refuse(member, f"has a path component longer than {NAME_MAX} bytes")
        return parts

    def _check_ids(self, member: Member) -> None:
        uids, gids = self.policy.uids, self.policy.gids
        if (uids is not None and member.uid not in uids) or (gids is not None and member.gid not in gids):
            shown = [f"{r.start}..{r.stop - 1}" for r in (uids, gids) if r is not None]
            raise self.refuse(
                member,
                f"is owned by uid {member.uid} gid {member.gid}, outside the container's ids "
                f"({' / '.join(shown)})",
            )

    # ------------------------------------------------------------------------------------------ paths

    def _parent(self, member: Member, parts: tuple[str, ...]) -> _Node:
        """The node of the member's parent directory, refusing symlinks and non-directories on the way.
        Parents not seen yet are implicit directories (returned as a detached node)."""
        node = self.root
        for i, part in enumerate(parts[:-1]):
            child = node.children.get(part) if node.children else None
            if child is None:
                return _Node(DIR)
            if child.kind == SYMLINK:
                raise self.refuse(
                    member, f"would be written through the symlink {'/'.join(parts[: i + 1])!r}"
                )
            if child.kind != DIR:
                raise self.refuse(
                    member, f"is below {'/'.join(parts[: i + 1])!r}, which is a {child.kind}, not a directory"
                )
            node = child
        return node

    def _lookup(self, parts: tuple[str, ...]) -> str | None:
        node = self.root
        for part in parts:
            child = node.children.get(part) if node.children else None
            if child is None:
                return None
            node = child
        return node.kind

    def _record(self, parts: tuple[str, ...], kind: str) -> None:
        node = self.root
        for part in parts[:-1]:
            if node.children is None:
                node.children = {}
            node = node.children.setdefault(part, _Node(DIR))
        if node.children is None:
            node.children = {}
        existing = node.children.get(parts[-1])
        if existing is None:
            node.children[parts[-1]] = _Node(kind)

    # ------------------------------------------------------------------------------------------ links

    def _check_hardlink(self, member: Member, parts: tuple[str, ...]) -> tuple[str, ...]:
        target = member.linkname
        scope = self.layout.scope
        if "\0" in target or target.startswith("/"):
            raise self.refuse(member, f"is a hard link to {target!r}, outside {self.layout.scope_name}")
        tparts = tuple(c for c in target.split("/") if c not in ("", "."))
        if ".." in tparts or tparts[: len(scope)] != scope or len(tparts) <= len(scope):
            raise self.refuse(member, f"is a hard link to {target!r}, outside {self.layout.scope_name}")
        if tparts == parts or self._lookup(tparts) != FILE:
            raise self.refuse(member, f"is a hard link to {target!r}, which is not an earlier regular file")
        return tparts

    def _check_symlink(self, member: Member, parts: tuple[str, ...]) -> None:
        target = member.linkname
        if not target:
            raise self.refuse(member, "is a symlink with an empty target")
        if "\0" in target:
            raise self.refuse(member, "is a symlink whose target has a NUL byte")
        if len(os.fsencode(target)) >= PATH_MAX:
            raise self.refuse(member, f"is a symlink whose target is longer than {PATH_MAX - 1} bytes")
        self.layout.check_symlink_target(member, parts)

    # ------------------------------------------------------------------------------------------ sizes

    def _check_size(self, member: Member) -> None:
        """Refuse at the header a member that cannot fit; count its data against the budget."""
        budget, limit = self.policy.budget, self.policy.apparent_limit
        free = total = None
        if self.space is not None and (member.data >= _ASK_DISK_FROM or member.size >= _ASK_DISK_FROM):
            free, total = self.space()
        if limit is None:
            limit = total
        if limit is not None and member.size > limit:
            raise InsufficientStorage(
                self.policy.refuse_text(
                    member.name,
                    f"is a file of {member.size} bytes, more than the filesystem can hold ({limit})",
                )
            )
        if free is not None and member.data > free:
            raise InsufficientStorage(
                f"no space left on {self._where()}: "
                + self.policy.refuse_text(member.name, f"needs {member.data} bytes, {free} are free")
            )
        if budget is not None and self.used + member.data > budget:
            text = self.policy.refuse_text(
                member.name,
                f"would bring the data written to {self.used + member.data} bytes, more than the "
                f"{budget} allowed for {'the image' if self.layout.image else 'this volume'}",
            )
            if not self.layout.image:  # a volume's budget is what its source declared: the source lied
                raise BadRequest(f"the source sent more than it declared for the volume: {text}")
            raise InsufficientStorage(text)
        self.used += member.data

    def _where(self) -> str:
        return (
            "device while unpacking the image"
            if self.layout.image
            else "the target while receiving the volume"
        )
