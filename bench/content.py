"""Deterministic benchmark content: the same bytes on every run, for every tool.

Why deterministic: orch, LXD and rsync must move byte-identical trees, and a re-run next week must move
the same data, or medians are not comparable. Content is random (incompressible) so that no tool gains
from compression it would not get on real data, and it is made from a seeded PRNG, so nothing is
downloaded and nothing depends on /dev/urandom.

Trees:
- ``SMALL``: 50 x 1 MiB + 500 x 4 KiB (52 MiB in 550 files), the main case.
- ``GIB``: 4 x 256 MiB (1 GiB), the bulk-throughput case.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
KiB = 1 << 10
_CHUNK = 1 * MiB


@dataclass(frozen=True)
class TreeSpec:
    """Which files a tree holds: ``groups`` is a tuple of (file-name prefix, count, size in bytes)."""

    name: str
    groups: tuple[tuple[str, int, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(count * size for _, count, size in self.groups)

    @property
    def file_count(self) -> int:
        return sum(count for _, count, _ in self.groups)


SMALL = TreeSpec("52MB", (("big", 50, 1 * MiB), ("small", 500, 4 * KiB)))
GIB = TreeSpec("1GiB", (("huge", 4, 256 * MiB),))


def _write_random(path: Path, size: int, rng: random.Random, uid: int, gid: int) -> None:
    """Write ``size`` bytes from ``rng`` to a new ``path`` (1 MiB at a time: randbytes caps its size)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, _CHUNK)
            f.write(rng.randbytes(n))
            left -= n
    os.chown(tmp, uid, gid)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_tree(root: Path, spec: TreeSpec, seed: int = 1, uid: int = 0, gid: int = 0) -> list[Path]:
    """Create ``root`` and fill it with ``spec``'s files, owned by ``uid:gid``; return the file paths.

    Each file has its own PRNG seeded from (seed, file name), so one file's bytes never depend on how
    many others were written before it (a change helper can regenerate any single file).
    """
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, uid, gid)
    os.chmod(root, 0o755)
    paths = []
    for prefix, count, size in spec.groups:
        for i in range(count):
            path = root / f"{prefix}-{i:04d}"
            _write_random(path, size, random.Random(f"{seed}/{path.name}"), uid, gid)
            paths.append(path)
    return paths


def files_under(root: Path) -> list[Path]:
    """Regular files below ``root``, sorted, so that a choice among them is reproducible."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path)
    return sorted(out)


def change_fraction(root: Path, fraction: float = 0.01, seed: int = 1) -> list[Path]:
    """Rewrite ``fraction`` of the files under ``root`` (at least one) with new random bytes.

    Same size, owner and mode as before; the mtime moves forward, as a real write would, so rsync's
    quick check (size + mtime) sees the change. Which files, and their new bytes, follow from ``seed``:
    pass a different seed per run so each run has something new to transfer.
    """
    files = files_under(root)
    if not files:
        return []
    rng = random.Random(f"change/{seed}")
    chosen = rng.sample(files, max(1, math.ceil(len(files) * fraction)))
    for path in chosen:
        st = path.stat()
        _write_random(path, st.st_size, random.Random(f"change/{seed}/{path.name}"), st.st_uid, st.st_gid)
        os.chmod(path, st.st_mode & 0o7777)
    return chosen


def tree_digest(root: Path) -> str:
    """SHA-256 over every regular file's relative path, size and bytes: equal digests, equal trees."""
    h = hashlib.sha256()
    for path in files_under(root):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def extract_rootfs(image_tarball: Path, dest: Path) -> Path:
    """Unpack the image's ``rootfs/`` under ``dest`` with numeric owners; return the rootfs path.

    Gives rsync the same base tree (busybox, ~400 symlinks) that LXD moves with every container.
    """
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "-x", "-z", "-f", str(image_tarball), "-C", str(dest), "--numeric-owner", "rootfs"],
        check=True,
    )
    return dest / "rootfs"
