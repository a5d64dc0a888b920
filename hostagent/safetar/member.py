"""One archive member as the reader decoded it: what the validator judges and the writer makes."""

from __future__ import annotations

from dataclasses import dataclass, field

# kinds of members (a hard link makes a regular file, see :func:`path_kind`)
FILE, HARDLINK, SYMLINK, DIR, FIFO, CHAR, BLOCK = (
    "regular file",
    "hard link",
    "symlink",
    "directory",
    "fifo",
    "character device",
    "block device",
)
DEVICES = (CHAR, BLOCK)


@dataclass(slots=True)
class Member:
    name: str  # as in the archive (after pax/GNU long names), for messages
    kind: str
    mode: int  # permission bits (setuid/setgid/sticky included)
    uid: int
    gid: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    #: the file's length (a sparse file's apparent size)
    size: int = 0
    #: data bytes the archive holds for it: what writing it costs (holes are free)
    data: int = 0
    #: (offset, length) of each data segment of a sparse file; None for a plain file
    segments: list[tuple[int, int]] | None = None
    #: extended attributes as the archive gives them (pax ``SCHILY.xattr.*``), raw bytes
    xattrs: dict[str, bytes] = field(default_factory=dict)


def path_kind(kind: str) -> str:
    """The kind of path a member leaves behind: a hard link is one more name of a regular file."""
    return FILE if kind == HARDLINK else kind
