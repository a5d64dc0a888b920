"""Inspect and safely unpack LXD "unified" image tarballs.

A unified tarball holds ``metadata.yaml``, the root filesystem under ``rootfs/`` and optionally
``templates/``; it is gzip-compressed or a plain tar, and its member names may start with ``./``.

Images come from users, so the archive is treated as hostile: :func:`inspect_tarball` reads it once
without writing anything and refuses, with a :class:`BadRequest` naming the offending member, anything
that could write outside the volume (absolute names, ``..``, links that escape, writes through symlinks),
anything an unprivileged container cannot own (device nodes, ids beyond its 65536-id user namespace) and
archives that are corrupt or truncated. :func:`extract_rootfs` checks again while it writes, and writes
only through directory file descriptors opened with ``O_NOFOLLOW``, so it is safe on its own.

Python's ``tarfile`` is lenient in ways that matter here: a corrupt header or a cut at a header boundary
silently ends the member list, and its gzip reader checks neither the CRC nor the end of the stream. So
gzip is decoded with :mod:`gzip` (which checks both) and the block where ``tarfile`` stopped must be the
all-zero end-of-archive block.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Self

import yaml

from orchapi.errors import BadRequest

#: ids a container can own: its user namespace maps exactly 65536 uids and gids
ID_LIMIT = 65536
#: metadata.yaml is a few hundred bytes; refuse to load a huge one into memory
METADATA_LIMIT = 1024 * 1024
#: longest file name component Linux accepts, in bytes
NAME_MAX = 255
TOP_LEVEL = ("metadata.yaml", "rootfs", "templates")

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1024 * 1024
#: how much of the decoded stream to remember: tarfile reads ahead at most one record past a header
_WINDOW = 64 * 1024
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OTHER_MAGIC = {
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x5d\x00\x00": "lzma",
}

# kinds of paths the validator tracks
FILE, DIR, SYMLINK, FIFO = "regular file", "directory", "symlink", "fifo"


@dataclass
class ImageMetadata:
    """What an image tarball says about itself, plus sizes the store needs to plan disk space."""

    architecture: str
    creation_date: str
    properties: dict[str, str] = field(default_factory=dict)
    init: str = "/sbin/init"
    #: bytes of the decoded tar stream (headers and padding included): an upper bound for the content
    uncompressed_size: int = 0
    compressed: bool = False


def inspect_tarball(path: Path) -> ImageMetadata:
    """Validate the whole image at ``path`` and return its metadata; :class:`BadRequest` if unusable."""
    validator = _Validator()
    metadata: dict[str, Any] | None = None
    with _Archive(Path(path)) as archive:
        for member in archive.members():
            parts = validator.check(member)
            if parts == ("metadata.yaml",):
                metadata = _parse_metadata(archive.read_member(member, METADATA_LIMIT))
        size = archive.finish()
    validator.check_complete(metadata is not None)
    assert metadata is not None
    return ImageMetadata(
        architecture=metadata["architecture"],
        creation_date=metadata["creation_date"],
        properties=metadata["properties"],
        init=metadata["properties"].get("init") or "/sbin/init",
        uncompressed_size=size,
        compressed=archive.compressed,
    )


def extract_rootfs(path: Path, dest: Path) -> None:
    """Unpack the ``rootfs/`` members of the image at ``path`` into the existing directory ``dest``.

    Numeric owners, modes (setuid included), mtimes, hard links, symlinks and fifos are kept. The image
    is inspected first, so a hostile one writes nothing; every member is checked again before it is
    written, in case the file changed in between.
    """
    inspect_tarball(path)
    validator = _Validator()
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        writer = _Writer(root_fd)
        with _Archive(Path(path)) as archive:
            for member in archive.members():
                parts = validator.check(member)
                if parts and parts[0] == "rootfs":
                    writer.write(archive, member, parts[1:])
            archive.finish()
        writer.finish_directories()
    finally:
        os.close(root_fd)


# ---------------------------------------------------------------------------------------------- reading


class _Window(io.RawIOBase):
    """A read-only stream that remembers the last bytes it returned, by absolute offset.

    Lets us look at the block where ``tarfile`` stopped, which it does not report.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self.position = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.position += len(data)
        self._buf += data
        excess = len(self._buf) - _WINDOW
        if excess > 0:
            del self._buf[:excess]
            self._start += excess
        return data

    def block_at(self, offset: int) -> bytes | None:
        """The 512-byte block at ``offset`` if it was read and is still remembered, else None."""
        lo = offset - self._start
        if lo < 0 or lo + _BLOCK > len(self._buf):
            return None
        return bytes(self._buf[lo : lo + _BLOCK])


class _Archive:
    """One streaming pass over an image file that turns every read failure into :class:`BadRequest`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.compressed = False
        self._last: str | None = None  # name of the last member read, for error messages
        self._file: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None
        self._stream: _Window | None = None

    def __enter__(self) -> Self:
        self._file = open(self.path, "rb")
        try:
            magic = self._file.read(6)
            self._file.seek(0)
            self._refuse_other_compression(magic)
            self.compressed = magic[:2] == b"\x1f\x8b"
            raw: IO[bytes] = gzip.GzipFile(fileobj=self._file, mode="rb") if self.compressed else self._file
            self._stream = _Window(raw)
            self._tar = self._guard(lambda: tarfile.open(fileobj=self._stream, mode="r|"))  # noqa: SIM115
        except BaseException:
            self._file.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._file is not None:
            self._file.close()

    @staticmethod
    def _refuse_other_compression(magic: bytes) -> None:
        for prefix, name in _OTHER_MAGIC.items():
            if magic.startswith(prefix):
                raise BadRequest(
                    f"image file is {name}-compressed, which is not supported",
                    "use a gzip-compressed or plain tar",
                )

    def _guard(self, fn: Any) -> Any:
        """Call ``fn``; a read failure becomes a one-line BadRequest naming where it happened."""
        try:
            return fn()
        except _READ_ERRORS as exc:
            detail = str(exc) or type(exc).__name__
            if self._last is None:
                raise BadRequest(
                    f"image file is not a valid tar or gzip-compressed tar archive: {detail}"
                ) from None
            raise BadRequest(
                f"image file is truncated or corrupt at or after member {self._last!r}: {detail}"
            ) from None

    def members(self) -> Iterator[tarfile.TarInfo]:
        """Every member header in order."""
        assert self._tar is not None
        it = iter(self._tar)
        while True:
            member = self._guard(lambda: next(it, None))
            if member is None:
                return
            self._last = member.name
            yield member

    def read_member(self, member: tarfile.TarInfo, limit: int) -> bytes:
        """The content of the current member, refused if it is larger than ``limit`` bytes."""
        if member.size > limit:
            raise BadRequest(
                f"image member {member.name!r} is too large ({member.size} bytes, limit {limit})"
            )
        assert self._tar is not None
        fh = self._guard(lambda: self._tar.extractfile(member))
        return self._guard(lambda: fh.read()) if fh is not None else b""

    def chunks(self, member: tarfile.TarInfo) -> Iterator[bytes]:
        """The content of the current member, in chunks (read errors become BadRequest)."""
        assert self._tar is not None
        fh = self._guard(lambda: self._tar.extractfile(member))
        if fh is None:
            return
        while chunk := self._guard(lambda: fh.read(_CHUNK)):
            yield chunk

    def finish(self) -> int:
        """Check the archive ended properly and the compressed stream is intact; return the decoded size."""
        assert self._tar is not None and self._stream is not None
        end = self._tar.offset
        block = self._stream.block_at(end)
        if block is None:
            raise BadRequest(
                f"image file is truncated after member {self._last!r}: it has no end-of-archive block"
            )
        if block != bytes(_BLOCK):
            raise BadRequest(
                f"image file is corrupt: invalid tar header at offset {end} after member {self._last!r}"
            )
        # decode the rest, so that gzip verifies its CRC and notices a cut-off stream
        while self._guard(lambda: self._stream.read(_CHUNK)):
            pass
        return self._stream.position


# ------------------------------------------------------------------------------------------- validating


def _split(name: str) -> tuple[str, ...]:
    """Path components of a member name, without empty and ``.`` components."""
    return tuple(c for c in name.split("/") if c not in ("", "."))


def _kind(member: tarfile.TarInfo) -> str:
    """The kind of path a member makes (a hard link makes a regular file)."""
    if member.isreg() or member.islnk():
        return FILE
    if member.isdir():
        return DIR
    if member.issym():
        return SYMLINK
    if member.isfifo():
        return FIFO
    if member.ischr() or member.isblk():
        raise BadRequest(
            f"image member {member.name!r} is a device node: images may not contain device nodes "
            "because containers are unprivileged"
        )
    raise BadRequest(f"image member {member.name!r} has an unsupported type {member.type!r}")


class _Validator:
    """Checks members one by one, in archive order, remembering the kind of every path seen so far.

    All checks depend only on earlier members, so the same validator guards extraction as it goes.
    """

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.has_rootfs = False
        self.has_metadata = False

    def check(self, member: tarfile.TarInfo) -> tuple[str, ...]:
        """Return the member's normalised path components, or raise :class:`BadRequest`."""
        name = member.name
        if name.startswith("/"):
            raise BadRequest(f"image member {name!r} has an absolute path")
        parts = _split(name)
        if ".." in parts:
            raise BadRequest(f"image member {name!r} has a '..' path component")
        kind = _kind(member)
        if not parts:  # the archive's own "./" entry
            if kind != DIR:
                raise BadRequest(f"image member {name!r} must be a directory")
            return parts
        self._check_names(name, parts)
        self._check_ids(member)
        self._check_top_level(member, parts, kind)
        path = "/".join(parts)
        self._check_parents(name, parts)
        previous = self.kinds.get(path)
        if previous is not None and previous != kind:
            raise BadRequest(
                f"image member {name!r} changes the type of an earlier member from {previous} to {kind}"
            )
        if member.islnk():
            self._check_hardlink(member, path)
        elif member.issym():
            self._check_symlink(member, parts)
        self._record(parts, kind)
        return parts

    def check_complete(self, metadata_read: bool) -> None:
        """After the last member: the parts every image needs are there."""
        if not metadata_read:
            raise BadRequest(
                "image has no metadata.yaml", "a unified image tarball needs metadata.yaml and rootfs/"
            )
        if not self.has_rootfs:
            raise BadRequest(
                "image has no rootfs/ directory", "a unified image tarball needs metadata.yaml and rootfs/"
            )

    @staticmethod
    def _check_names(name: str, parts: tuple[str, ...]) -> None:
        for part in parts:
            if len(os.fsencode(part)) > NAME_MAX:
                raise BadRequest(f"image member {name!r} has a path component longer than {NAME_MAX} bytes")

    @staticmethod
    def _check_ids(member: tarfile.TarInfo) -> None:
        if not 0 <= member.uid < ID_LIMIT or not 0 <= member.gid < ID_LIMIT:
            raise BadRequest(
                f"image member {member.name!r} is owned by uid {member.uid} gid {member.gid}: ids must be "
                f"below {ID_LIMIT} to be mapped into the container's user namespace"
            )

    def _check_top_level(self, member: tarfile.TarInfo, parts: tuple[str, ...], kind: str) -> None:
        name, top = member.name, parts[0]
        if top not in TOP_LEVEL or (top == "metadata.yaml" and len(parts) > 1):
            raise BadRequest(
                f"image member {name!r} is outside metadata.yaml, rootfs/ and templates/",
            )
        if top == "metadata.yaml":
            if not member.isreg():
                raise BadRequest(f"image member {name!r} must be a regular file")
            if self.has_metadata:
                raise BadRequest(f"image member {name!r} is a second metadata.yaml")
            self.has_metadata = True
        elif len(parts) == 1 and kind != DIR:
            raise BadRequest(f"image member {name!r} must be a directory")
        elif top == "templates" and (member.islnk() or kind not in (FILE, DIR)):
            raise BadRequest(f"image member {name!r}: templates/ may only hold regular files and directories")
        if top == "rootfs":
            self.has_rootfs = True

    def _check_parents(self, name: str, parts: tuple[str, ...]) -> None:
        """Refuse writing through a symlink, or below something that is not a directory."""
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            kind = self.kinds.get(prefix)
            if kind == SYMLINK:
                raise BadRequest(f"image member {name!r} would be written through the symlink {prefix!r}")
            if kind not in (None, DIR):
                raise BadRequest(
                    f"image member {name!r} is below {prefix!r}, which is a {kind}, not a directory"
                )

    def _check_hardlink(self, member: tarfile.TarInfo, path: str) -> None:
        name, target = member.name, member.linkname
        if target.startswith("/"):
            raise BadRequest(f"image member {name!r} is a hard link to an absolute path {target!r}")
        parts = _split(target)
        if ".." in parts:
            raise BadRequest(
                f"image member {name!r} is a hard link to {target!r}, which has a '..' component"
            )
        if len(parts) < 2 or parts[0] != "rootfs":
            raise BadRequest(f"image member {name!r} is a hard link to {target!r}, which is outside rootfs/")
        resolved = "/".join(parts)
        if resolved == path or self.kinds.get(resolved) != FILE:
            raise BadRequest(
                f"image member {name!r} is a hard link to {target!r}, which is not an earlier regular file"
            )

    @staticmethod
    def _check_symlink(member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """Absolute targets are resolved inside the container; relative ones must stay inside rootfs/."""
        name, target = member.name, member.linkname
        if not target:
            raise BadRequest(f"image member {name!r} is a symlink with an empty target")
        if target.startswith("/"):
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
                    f"image member {name!r} is a symlink to {target!r}, which points above rootfs/"
                )

    def _record(self, parts: tuple[str, ...], kind: str) -> None:
        for i in range(1, len(parts)):
            self.kinds.setdefault("/".join(parts[:i]), DIR)
        self.kinds["/".join(parts)] = kind


def _parse_metadata(data: bytes) -> dict[str, Any]:
    """Check metadata.yaml and normalise it: architecture, ISO creation_date, string properties."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadRequest(f"image member 'metadata.yaml' is not valid YAML: {first}") from None
    if not isinstance(doc, dict):
        raise BadRequest("image member 'metadata.yaml' must be a YAML mapping")
    architecture = doc.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise BadRequest("image member 'metadata.yaml' has no 'architecture' string")
    return {
        "architecture": architecture,
        "creation_date": _creation_date(doc.get("creation_date")),
        "properties": _properties(doc.get("properties")),
    }


def _creation_date(value: Any) -> str:
    """An epoch number or an ISO 8601 string, as an ISO 8601 string in UTC."""
    try:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC).isoformat()
        if isinstance(value, datetime):  # YAML reads unquoted timestamps as datetimes
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        if isinstance(value, date):  # ... and unquoted dates as dates
            return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat()
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    except (ValueError, OverflowError, OSError):
        pass
    raise BadRequest(
        "image member 'metadata.yaml' needs 'creation_date' as an epoch number or an ISO 8601 date",
        f"got {value!r}",
    )


def _properties(value: Any) -> dict[str, str]:
    """The optional ``properties`` mapping with scalar values turned into strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("image member 'metadata.yaml' has 'properties' that is not a mapping")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, (dict, list)):
            raise BadRequest(
                f"image member 'metadata.yaml' has an invalid property {key!r}: values must be scalars"
            )
        if isinstance(item, bool):
            item = str(item).lower()
        out[key] = "" if item is None else str(item)
    return out


# ------------------------------------------------------------------------------------------------ writing


def _open_dir(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open the directory ``parts`` below ``root_fd``, creating missing ones, never following a symlink."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlink_quietly(name: str, dir_fd: int) -> None:
    """Remove a non-directory so a later member replaces it instead of writing into it."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _set_attributes(fd: int, member: tarfile.TarInfo) -> None:
    """Owner first: chown clears setuid/setgid bits, so the mode must come after it."""
    if os.geteuid() == 0:
        os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, member.mode & 0o7777)
    _set_mtime(lambda times: os.utime(fd, times), member)


def _set_mtime(apply: Any, member: tarfile.TarInfo) -> None:
    try:
        apply((member.mtime, member.mtime))
    except (OverflowError, ValueError):
        pass  # an out-of-range mtime is not worth refusing the image for


class _Writer:
    """Writes rootfs members below one directory fd.

    Directory attributes are set last, because writing their children changes their mtimes.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.directories: dict[tuple[str, ...], tarfile.TarInfo] = {}

    def write(self, archive: _Archive, member: tarfile.TarInfo, rel: tuple[str, ...]) -> None:
        if member.isdir():
            _open_and_close(self.root_fd, rel)
            self.directories[rel] = member
            return
        parent = _open_dir(self.root_fd, rel[:-1])
        try:
            name = rel[-1]
            if member.isreg():
                self._file(archive, member, name, parent)
            elif member.islnk():
                self._hardlink(member, name, parent)
            elif member.issym():
                self._symlink(member, name, parent)
            elif member.isfifo():
                self._fifo(member, name, parent)
        finally:
            os.close(parent)

    @staticmethod
    def _file(archive: _Archive, member: tarfile.TarInfo, name: str, parent: int) -> None:
        _unlink_quietly(name, parent)
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        try:
            for chunk in archive.chunks(member):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            _set_attributes(fd, member)
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, name: str, parent: int) -> None:
        target = _split(member.linkname)[1:]  # validated: inside rootfs/, an earlier regular file
        source_dir = _open_dir(self.root_fd, target[:-1])
        try:
            _unlink_quietly(name, parent)
            os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_dir)

    @staticmethod
    def _symlink(member: tarfile.TarInfo, name: str, parent: int) -> None:
        _unlink_quietly(name, parent)
        os.symlink(member.linkname, name, dir_fd=parent)
        if os.geteuid() == 0:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        _set_mtime(lambda times: os.utime(name, times, dir_fd=parent, follow_symlinks=False), member)

    @staticmethod
    def _fifo(member: tarfile.TarInfo, name: str, parent: int) -> None:
        _unlink_quietly(name, parent)
        os.mkfifo(name, 0o600, dir_fd=parent)
        # opening a fifo for reading without O_NONBLOCK would wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise OSError(f"{name!r} is not the fifo just made")
            _set_attributes(fd, member)
        finally:
            os.close(fd)

    def finish_directories(self) -> None:
        """Apply directory owners, modes and mtimes, deepest first (``()`` is the rootfs/ entry itself)."""
        for rel in sorted(self.directories, key=len, reverse=True):
            fd = _open_dir(self.root_fd, rel)
            try:
                _set_attributes(fd, self.directories[rel])
            finally:
                os.close(fd)


def _open_and_close(root_fd: int, rel: tuple[str, ...]) -> None:
    """Make sure the directory ``rel`` exists (without following symlinks)."""
    os.close(_open_dir(root_fd, rel))
