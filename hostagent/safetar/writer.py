"""Writing validated members below one directory file descriptor, never following a symlink.

Every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, every
file is created with ``O_EXCL | O_NOFOLLOW``, so even a member the validator let through by mistake
cannot write outside the destination. The order of operations matters:

- owner first, then mode: ``chown`` clears setuid/setgid, so the mode (with those bits) comes after it;
- xattrs after ``chown``, which drops file capabilities; the mtime last;
- a file is made with mode 0600 and only gets its real mode (setuid included) once its content is in;
- directory attributes are set at the very end, deepest first: writing their children changes their
  mtimes, and a read-only directory would refuse its children;
- sparse files: each data segment is written at its offset (``pwrite``), the length set with
  ``ftruncate``, so holes stay holes;
- device nodes and fifos are made with ``mknod`` and then only reached through an ``O_PATH`` descriptor
  (opening a device could act on it).

``ENOSPC``/``EDQUOT`` propagate as :class:`OSError`; hostagent/safetar/__init__.py turns them into
:class:`InsufficientStorage`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from hostagent.safetar.member import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Member
from hostagent.safetar.validator import Verdict

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_TYPES = {FIFO: stat.S_IFIFO, CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK}
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

Chunks = Iterator[tuple[int, memoryview]]


def open_dir(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open the directory ``parts`` below ``root_fd``, making missing ones, never following a symlink."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlink_quietly(name: str, dir_fd: int) -> None:
    """Remove an earlier non-directory of that name: a later member replaces it, never writes into it."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


class Writer:
    """Makes members below ``root_fd`` (the destination's root, owned by the caller)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.chown = os.geteuid() == 0
        self.directories: dict[tuple[str, ...], tuple[Member, dict[str, bytes]]] = {}
        # the last parent directory opened: archives list a directory's entries together
        self._cached: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _parent(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the directory ``parts`` (borrowed: the writer closes it)."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = open_dir(self.root_fd, parts)
        self.close()
        self._cached = (parts, fd)
        return fd

    def write(self, member: Member, verdict: Verdict, chunks: Chunks) -> None:
        """Make ``member`` where the validator's ``verdict`` says (``verdict.written`` is not None)."""
        rel, xattrs = verdict.written, verdict.xattrs
        assert rel is not None
        if member.kind == DIR:
            if rel:
                self._parent(rel)  # make it now: its children may come later
            self.directories[rel] = (member, xattrs)
            return
        parent = self._parent(rel[:-1])
        name = rel[-1]
        if member.kind == FILE:
            self._file(member, name, parent, xattrs, chunks)
        elif member.kind == HARDLINK:
            assert verdict.link is not None
            self._hardlink(verdict.link, name, parent)
        elif member.kind == SYMLINK:
            self._symlink(member, name, parent)
        else:
            self._node(member, name, parent, xattrs)

    def finish(self) -> None:
        """Directory owners, modes, xattrs and mtimes, deepest first (``()`` is the root itself)."""
        self.close()
        for rel in sorted(self.directories, key=len, reverse=True):
            member, xattrs = self.directories[rel]
            fd = open_dir(self.root_fd, rel)
            try:
                self._attributes(fd, member, xattrs)
            finally:
                os.close(fd)

    # ----------------------------------------------------------------------------------------- kinds

    def _file(self, member: Member, name: str, parent: int, xattrs: dict[str, bytes], chunks: Chunks) -> None:
        _unlink_quietly(name, parent)
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            if member.segments is None:
                for _offset, view in chunks:
                    while view:
                        view = view[os.write(fd, view) :]
            else:
                for offset, view in chunks:
                    while view:
                        written = os.pwrite(fd, view, offset)
                        view, offset = view[written:], offset + written
                os.ftruncate(fd, member.size)
            self._attributes(fd, member, xattrs)
        finally:
            os.close(fd)

    def _hardlink(self, target: tuple[str, ...], name: str, parent: int) -> None:
        """``target``: the validated link target (an earlier regular file), relative to the root."""
        source_dir = open_dir(self.root_fd, target[:-1])
        try:
            _unlink_quietly(name, parent)
            os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_dir)

    def _symlink(self, member: Member, name: str, parent: int) -> None:
        _unlink_quietly(name, parent)
        os.symlink(member.linkname, name, dir_fd=parent)
        if self.chown:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        _set_mtime(lambda ns: os.utime(name, ns=ns, dir_fd=parent, follow_symlinks=False), member)

    def _node(self, member: Member, name: str, parent: int, xattrs: dict[str, bytes]) -> None:
        """A fifo, or a device node of a privileged container."""
        _unlink_quietly(name, parent)
        kind = _NODE_TYPES[member.kind]
        device = os.makedev(member.devmajor, member.devminor) if member.kind != FIFO else 0
        os.mknod(name, kind | 0o600, device, dir_fd=parent)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
                raise OSError(errno.EEXIST, f"{name!r} is not the node just made")
            path = f"/proc/self/fd/{fd}"  # an O_PATH descriptor: its magic link reaches the inode itself
            if self.chown:
                os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode)
            _set_xattrs(path, xattrs)
            _set_mtime(lambda ns: os.utime(path, ns=ns), member)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------------ attributes

    def _attributes(self, fd: int, member: Member, xattrs: dict[str, bytes]) -> None:
        if self.chown:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode)
        _set_xattrs(fd, xattrs)
        _set_mtime(lambda ns: os.utime(fd, ns=ns), member)


def _set_xattrs(target: int | str, xattrs: dict[str, bytes]) -> None:
    for key, value in xattrs.items():
        try:
            os.setxattr(target, key, value)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise
            # a filesystem without this xattr namespace: the content is still right


def _set_mtime(apply: object, member: Member) -> None:
    try:
        apply((member.mtime_ns, member.mtime_ns))  # type: ignore[operator]
    except (OverflowError, ValueError):
        pass  # an out-of-range mtime is not worth refusing the archive for
