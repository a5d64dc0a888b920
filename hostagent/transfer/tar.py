"""tar: the fallback, a plain stream of each volume (no delta, no pre-fill).

The source runs GNU tar (``--numeric-owner --xattrs --xattrs-include=*``, POSIX format: owners, modes,
nanosecond mtimes, hard links, symlinks, fifos, xattrs including file capabilities and ACLs, which travel
as ``system.posix_acl_*`` xattrs). The target reads the stream with Python's tarfile in a thread and
writes it itself, treating it as hostile exactly like an image: no absolute names, no ``..``, nothing
written through a symlink or below a non-directory, hard links only to earlier regular files, every
directory opened with ``O_NOFOLLOW`` relative to the volume's own file descriptor, owners inside the
container's id range, no device nodes for unprivileged containers. A refused member stops the transfer
and the staging volume is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from hostagent.images.tarball import _open_dir, _set_mtime, _split, _unlink_quietly
from hostagent.migration.protocol import CHUNK
from hostagent.runtimes.idmap import IdMap
from hostagent.transfer.base import (
    Child,
    ReceiveContext,
    SendContext,
    TransferMethod,
    WriterSink,
    fd_writer,
    grow_pipe,
    relay_child_stdout,
)
from orchapi.errors import BadRequest, InsufficientStorage, InternalError, Unavailable

_XATTR = "SCHILY.xattr."
_FILE, _DIR, _LINK, _OTHER = "file", "dir", "symlink", "other"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def tar_argv(path: Path) -> list[str]:
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={path}",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--format=posix",
        "--pax-option=delete=atime,delete=ctime",
        ".",
    ]


class VolumeExtractor:
    """Writes a tar stream into one (empty) volume, refusing anything that could escape it."""

    def __init__(self, dest: Path, idmap: IdMap | None) -> None:
        self.dest = dest
        self.idmap = idmap
        self.kinds: dict[tuple[str, ...], str] = {(): _DIR}
        self.directories: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.entries = 0

    # -- checks --------------------------------------------------------------------------------------
    def _refuse(self, member: tarfile.TarInfo, why: str) -> BadRequest:
        return BadRequest(f"refusing the tar stream from the source: member {member.name!r} {why}")

    def check(self, member: tarfile.TarInfo) -> tuple[str, ...]:
        name = member.name
        if name.startswith("/"):
            raise self._refuse(member, "has an absolute path")
        parts = _split(name)
        if ".." in parts:
            raise self._refuse(member, "has a '..' path component")
        if any(len(os.fsencode(p)) > 255 for p in parts):
            raise self._refuse(member, "has a path component longer than 255 bytes")
        if member.ischr() or member.isblk():
            if self.idmap is not None:
                raise self._refuse(member, "is a device node, and the container is unprivileged")
            kind = _OTHER
        elif member.isreg() or member.islnk():
            kind = _FILE
        elif member.isdir():
            kind = _DIR
        elif member.issym():
            kind = _LINK
        elif member.isfifo():
            kind = _OTHER
        else:
            raise self._refuse(member, f"has an unsupported type {member.type!r}")
        if not parts and kind != _DIR:
            raise self._refuse(member, "is the volume root but not a directory")
        if self.idmap is not None:
            uids = range(self.idmap.host_base, self.idmap.host_base + self.idmap.size)
            gids = range(self.idmap.gid_host_base, self.idmap.gid_host_base + self.idmap.size)
            if member.uid not in uids or member.gid not in gids:
                raise self._refuse(
                    member, f"is owned by {member.uid}:{member.gid}, outside the container's ids"
                )
        for i in range(len(parts) - 1):
            parent = self.kinds.get(parts[: i + 1])
            if parent == _LINK:
                raise self._refuse(
                    member, f"would be written through the symlink {'/'.join(parts[: i + 1])!r}"
                )
            if parent not in (None, _DIR):
                raise self._refuse(member, f"is below {'/'.join(parts[: i + 1])!r}, which is not a directory")
        previous = self.kinds.get(parts)
        if previous is not None and previous != kind:
            raise self._refuse(member, f"changes the type of an earlier member from {previous} to {kind}")
        if member.islnk():
            target = member.linkname
            tparts = _split(target)
            if target.startswith("/") or ".." in tparts or not tparts:
                raise self._refuse(member, f"is a hard link to {target!r}, outside the volume")
            if tparts == parts or self.kinds.get(tparts) != _FILE:
                raise self._refuse(
                    member, f"is a hard link to {target!r}, which is not an earlier regular file"
                )
        if member.issym() and not member.linkname:
            raise self._refuse(member, "is a symlink with an empty target")
        for i in range(len(parts) - 1):
            self.kinds.setdefault(parts[: i + 1], _DIR)
        self.kinds[parts] = kind
        return parts

    # -- writing -------------------------------------------------------------------------------------
    def run(self, stream: IO[bytes]) -> int:
        root = os.open(self.dest, _DIR_FLAGS)
        try:
            try:
                archive = tarfile.open(fileobj=stream, mode="r|", errorlevel=2)  # noqa: SIM115
                for member in archive:
                    parts = self.check(member)
                    self._write(root, archive, member, parts)
                    self.entries += 1
            except (tarfile.TarError, EOFError) as exc:
                raise BadRequest(f"the tar stream from the source is truncated or corrupt: {exc}") from None
            self._finish_directories(root)
            while stream.read(CHUNK):  # the end-of-archive padding: never leave the writer blocked
                pass
        finally:
            os.close(root)
        return self.entries

    def _write(
        self, root: int, archive: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]
    ) -> None:
        if member.isdir():
            os.close(_open_dir(root, parts))
            self.directories[parts] = member
            return
        parent = _open_dir(root, parts[:-1])
        try:
            name = parts[-1]
            _unlink_quietly(name, parent)
            if member.isreg():
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=parent,
                )
                try:
                    source = archive.extractfile(member)
                    if source is not None:
                        while chunk := source.read(CHUNK):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view) :]
                    self._attributes(fd, member)
                finally:
                    os.close(fd)
            elif member.islnk():
                target = _split(member.linkname)
                src_dir = _open_dir(root, target[:-1])
                try:
                    os.link(target[-1], name, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
                finally:
                    os.close(src_dir)
            elif member.issym():
                os.symlink(member.linkname, name, dir_fd=parent)
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                _set_mtime(lambda t: os.utime(name, t, dir_fd=parent, follow_symlinks=False), member)
            else:  # fifo, or a device node of a privileged container
                kind = stat.S_IFIFO if member.isfifo() else (stat.S_IFCHR if member.ischr() else stat.S_IFBLK)
                os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_PATH,
                    dir_fd=parent,
                )
                try:
                    os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                    os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
                    _set_mtime(lambda t: os.utime(name, t, dir_fd=parent, follow_symlinks=False), member)
                finally:
                    os.close(fd)
        finally:
            os.close(parent)

    @staticmethod
    def _xattrs(fd: int, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR):
                continue
            try:
                os.setxattr(fd, key[len(_XATTR) :], value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # a filesystem without this xattr namespace: the content is still right

    def _attributes(self, fd: int, member: tarfile.TarInfo) -> None:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        self._xattrs(fd, member)  # after chown, which drops file capabilities
        _set_mtime(lambda t: os.utime(fd, t), member)

    def _finish_directories(self, root: int) -> None:
        for parts in sorted(self.directories, key=len, reverse=True):
            fd = _open_dir(root, parts)
            try:
                self._attributes(fd, self.directories[parts])
            finally:
                os.close(fd)


def extract(stream: IO[bytes], dest: Path, idmap: IdMap | None) -> int:
    """Extract into ``dest``; no space becomes InsufficientStorage. Returns the number of members."""
    try:
        return VolumeExtractor(dest, idmap).run(stream)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("no space left on the target while receiving the volume") from None
        raise InternalError(f"writing the received volume failed: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            stream.close()


class TarMethod(TransferMethod):
    name = "tar"
    prefill = False

    async def send(self, ctx: SendContext) -> None:
        ch = ctx.channel
        child = await Child.spawn(tar_argv(ctx.path), "tar (source)", stdout=asyncio.subprocess.PIPE)
        try:
            await ch.send("tar")
            await ch.recv("ready")
            await relay_child_stdout(ch, child, "tar (source)", "extracting on the target failed")
        finally:
            await child.kill()

    async def receive(self, ctx: ReceiveContext) -> Path:
        ch = ctx.channel
        await ch.recv("tar")
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        grow_pipe(write_fd)
        stream = os.fdopen(read_fd, "rb", buffering=CHUNK)
        writer = await fd_writer(write_fd)
        sink = WriterSink(writer)
        ch.set_sink(sink)
        work: asyncio.Future[Any] = loop.run_in_executor(None, extract, stream, ctx.dest, ctx.idmap)
        try:
            await ch.send("ready")
            try:
                await work
            except Exception as exc:
                ch.set_sink(None)
                if ch.ws.closed:
                    raise Unavailable("the connection to the source agent closed unexpectedly") from exc
                await ch.send("exit", code=1, message=str(exc))
                raise
            ch.set_sink(None)
            if ch.ws.closed:
                raise Unavailable("the connection to the source agent closed unexpectedly")
            await ch.send("exit", code=0, message="")
            return ctx.dest
        finally:
            ch.set_sink(None)
            await sink.close()
            # the thread stops at the end of the pipe; wait for it so nothing writes after a cleanup
            with contextlib.suppress(BaseException):
                await asyncio.shield(work)
