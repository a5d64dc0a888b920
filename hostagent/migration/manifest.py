"""Volume manifests: what a volume holds, so that the target can prove it received exactly that.

A manifest has one line per entry of the volume, in a fixed order (one directory at a time: its entries
with names sorted, then each subdirectory's in turn, depth first), each line the compact JSON array::

    [path, type, mode, uid, gid, size, mtime, symlink_target, blake3, rdev, caps]

``path`` is relative to the volume (``"."`` for its root); ``type`` is ``f`` (regular file), ``d``, ``l``
(symlink), ``p`` (fifo), ``c`` or ``b`` (device); ``mode`` the permission bits (setuid etc. included);
``size`` and ``blake3`` (the content's 256-bit BLAKE3 hash) only for regular files; ``mtime`` (whole
seconds) for everything but directories (whose mtimes change as entries are added); ``rdev`` ``[major,
minor]`` for devices;
``caps`` the file's ``security.capability`` xattr in hex (regular files only), so that file capabilities
are verified like content, and the target can check whose root they name before the volume is used.
Sockets are left out: no transfer method carries them (tar cannot), and they mean nothing once their
process is gone.

The source computes its manifest in a thread while the volume streams and sends its digest (BLAKE3 of
the lines); the target computes its own over what it received and compares the digests. BLAKE3 is a
cryptographic hash like SHA-256 (collision-resistant, so a file cannot be swapped for another with the
same hash) at about a quarter of the CPU: ~0.15 CPU-s per GiB here against ~0.55. Only on a mismatch does the
source send the full manifest (in chunks), so the target can name the first differing paths; a manifest
from the peer is validated line by line (:func:`parse_lines`) before it is used.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blake3 import blake3

from orchapi.errors import BadRequest

_TYPES = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFIFO: "p",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
}
TYPES = frozenset(_TYPES.values())
FIELDS = ("path", "type", "mode", "uid", "gid", "size", "mtime", "target", "blake3", "rdev", "caps")
CAPS_XATTR = "security.capability"
#: a security.capability value is 20 (v2) or 24 (v3) bytes; anything longer is not one
_CAPS_MAX = 64
_READ = 1024 * 1024
#: files at least this large are hashed by the worker threads, smaller ones inline
_INLINE = 256 * 1024
#: entries between the walk and the emitted lines (bounds the hashes in flight)
_WINDOW = 64
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_local = threading.local()


@dataclass
class Manifest:
    """A volume's manifest lines, their digest, how many regular files it holds and the bytes it uses on
    disk (allocated blocks, hard links once: what the target checks against the declared size)."""

    lines: list[str]
    digest: str
    files: int
    allocated: int = 0

    @property
    def count(self) -> int:
        return len(self.lines)


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, absolute path, lstat) of every entry: a directory's entries (sorted), then below."""
    yield ".", root, os.lstat(root)
    stack: list[tuple[str, str]] = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        with os.scandir(abs_dir) as it:
            children = sorted(it, key=lambda e: e.name)
        subdirs: list[tuple[str, str]] = []
        for entry in children:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            yield rel, entry.path, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((rel, entry.path))
        # depth first: the subdirectories' contents follow right after their own entries' level
        stack.extend(reversed(subdirs))


def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(_READ)
    return buf


def hash_file(path: str) -> str:
    """BLAKE3 of a regular file's content, never following a symlink."""
    try:
        fd = os.open(path, _OPEN_FLAGS | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, _OPEN_FLAGS)
    try:
        digest = blake3()
        buf = _buffer()
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            digest.update(view[:n])
        return digest.hexdigest()
    finally:
        os.close(fd)


def read_caps(path: str) -> str | None:
    """A regular file's ``security.capability`` in hex, None if it has none (or no xattrs here)."""
    try:
        return os.getxattr(path, CAPS_XATTR, follow_symlinks=False).hex()
    except OSError:
        return None


def _line(rel: str, st: os.stat_result, target: str | None, sha: str | None, caps: str | None) -> str:
    kind = _TYPES.get(stat.S_IFMT(st.st_mode))
    mode = stat.S_IMODE(st.st_mode)
    size = st.st_size if kind == "f" else None
    mtime = None if kind == "d" else st.st_mtime_ns // 1_000_000_000
    rdev = [os.major(st.st_rdev), os.minor(st.st_rdev)] if kind in ("c", "b") else None
    entry = [rel, kind, mode, st.st_uid, st.st_gid, size, mtime, target, sha, rdev, caps]
    return json.dumps(entry, separators=(",", ":"))


def compute(root: Path, workers: int = 2) -> Manifest:
    """The manifest of the volume at ``root``.

    Small files are hashed by the walking thread itself (handing them to a thread costs more than
    hashing them); large ones by ``workers`` threads, while the walk goes on. Lines are emitted in walk
    order through a bounded window, so memory stays flat however large the tree.
    """
    digest = blake3()
    lines: list[str] = []
    files = 0
    allocated = 0
    links: dict[tuple[int, int], Any] = {}  # hard-linked inodes are hashed once
    window: deque[tuple[str, os.stat_result, str | None, Any, str | None]] = deque()

    def emit(rel: str, st: os.stat_result, target: str | None, sha: Any, caps: str | None) -> None:
        if isinstance(sha, Future):
            sha = sha.result()
        line = _line(rel, st, target, sha, caps)
        if lines:
            digest.update(b"\n")
        digest.update(line.encode("utf-8", "surrogatepass"))
        lines.append(line)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="manifest") as pool:
        for rel, path, st in _walk(str(root)):
            fmt = stat.S_IFMT(st.st_mode)
            if fmt not in _TYPES:
                continue  # sockets (and anything unknown) are not part of a volume's content
            target = os.readlink(path) if fmt == stat.S_IFLNK else None
            sha: Any = None
            caps = None
            key = (st.st_dev, st.st_ino)
            linked = st.st_nlink > 1 and fmt != stat.S_IFDIR  # a directory's links are its children
            first = not linked or key not in links
            if first:
                allocated += st.st_blocks * 512
            if fmt == stat.S_IFREG:
                files += 1
                caps = read_caps(path)
                sha = links.get(key) if linked else None
                if sha is None:
                    sha = pool.submit(hash_file, path) if st.st_size >= _INLINE else hash_file(path)
                    if linked:
                        links[key] = sha
            elif linked and first:
                links[key] = None
            window.append((rel, st, target, sha, caps))
            if len(window) >= _WINDOW:
                emit(*window.popleft())
        while window:
            emit(*window.popleft())
    return Manifest(lines, digest.hexdigest(), files, allocated)


def digest_of(lines: Iterable[str]) -> str:
    """The digest :func:`compute` gives for these lines."""
    digest = blake3()
    for i, line in enumerate(lines):
        if i:
            digest.update(b"\n")
        digest.update(line.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------- peer manifests


def _bad(index: int, why: str) -> BadRequest:
    return BadRequest(f"invalid manifest from the source agent: entry {index}: {why}")


def _check_path(index: int, path: Any) -> None:
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
        raise _bad(index, "the path must be a non-empty string")
    if path == ".":
        return
    if path.startswith("/"):
        raise _bad(index, f"absolute path {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise _bad(index, f"path {path!r} is not a normalised relative path (empty, '.' or '..' part)")


def _int(index: int, value: Any, name: str, lo: int, hi: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(index, f"{name} must be an integer between {lo} and {hi}")


def parse_lines(lines: Any) -> list[list[Any]]:
    """Validate manifest lines received from the peer; :class:`BadRequest` naming the first bad one."""
    if not isinstance(lines, list):
        raise BadRequest("invalid manifest from the source agent: lines must be a list")
    out = []
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise _bad(i, "not a string")
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            raise _bad(i, "not JSON") from None
        if not isinstance(entry, list) or len(entry) != len(FIELDS):
            raise _bad(i, f"expected an array of {len(FIELDS)} fields")
        path, kind, mode, uid, gid, size, mtime, target, sha, rdev, caps = entry
        _check_path(i, path)
        if kind not in TYPES:
            raise _bad(i, f"unknown type {kind!r}")
        _int(i, mode, "mode", 0, 0o7777)
        _int(i, uid, "uid", 0, 2**32 - 1)
        _int(i, gid, "gid", 0, 2**32 - 1)
        _int(i, size, "size", 0, 2**63 - 1, optional=kind != "f")
        _int(i, mtime, "mtime", -(2**63), 2**63 - 1, optional=True)
        if target is not None and (kind != "l" or not isinstance(target, str)):
            raise _bad(i, "only symlinks have a target")
        if sha is not None and (
            kind != "f"
            or not isinstance(sha, str)
            or len(sha) != 64
            or not all(c in "0123456789abcdef" for c in sha)
        ):
            raise _bad(i, "blake3 must be 64 lowercase hex digits, for regular files only")
        if rdev is not None and (
            kind not in ("c", "b")
            or not isinstance(rdev, list)
            or len(rdev) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in rdev)
        ):
            raise _bad(i, "rdev must be [major, minor], for devices only")
        if caps is not None and (
            kind != "f"
            or not isinstance(caps, str)
            or len(caps) > 2 * _CAPS_MAX
            or not all(c in "0123456789abcdef" for c in caps)
        ):
            raise _bad(i, "caps must be lowercase hex, for regular files only")
        out.append(entry)
    return out


def differences(source: list[list[Any]], target: list[list[Any]], limit: int = 5) -> list[str]:
    """The first ``limit`` differences between two parsed manifests, as ``path: what`` strings."""
    theirs = {e[0]: e for e in target}
    ours = {e[0] for e in source}
    out: list[str] = []
    for entry in source:
        got = theirs.get(entry[0])
        if got is None:
            out.append(f"{entry[0]}: missing on the target")
        elif got != entry:
            fields = [name for name, a, b in zip(FIELDS, entry, got, strict=True) if a != b]
            out.append(f"{entry[0]}: {', '.join(fields)} differ")
        if len(out) >= limit:
            return out
    for entry in target:
        if entry[0] not in ours:
            out.append(f"{entry[0]}: not on the source")
            if len(out) >= limit:
                break
    return out
