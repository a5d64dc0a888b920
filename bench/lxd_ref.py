"""The LXD reference cases, timed with ``lxc`` between two private daemons (see ``bench.lxd``).

- ``move 52MB`` / ``move empty``: ``lxc move a:C b:C -s POOL`` of a stopped container, timed; it is moved
  back untimed before the next run, so every run starts from the same state (container on a, image on
  both daemons, nothing on b).
- ``refresh 1%``: the container is copied to b once (untimed); per run 1 % of its content files change on
  a (untimed) and ``lxc copy a:C b:C --refresh`` is timed. No snapshots: LXD 5.0.2 breaks the target of a
  btrfs refresh when there are some.

Content is written straight into the stopped container's rootfs on the host, owned like the rootfs's
``/root``: 550 ``lxc file push`` calls would take longer than the benchmark and prove nothing more.
The first timed run of each case is checked: the tree on the target must hash like the source.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import content
from bench.lxd import LxdLab
from bench.stats import LXD, MOVE_EMPTY, MOVE_FULL, REFRESH, Result

CONTENT_DIR = Path("root/bench")  # where the payload lives inside the container's rootfs


def fill(rootfs: Path, spec: content.TreeSpec = content.SMALL, seed: int = 1) -> Path:
    """Write the payload into ``rootfs/root/bench`` with the rootfs's own (possibly shifted) owner."""
    st = os.stat(rootfs / "root")
    target = rootfs / CONTENT_DIR
    content.write_tree(target, spec, seed=seed, uid=st.st_uid, gid=st.st_gid)
    return target


def tree_bytes(root: Path) -> int:
    """Bytes in regular files under ``root`` (symlinks not followed): the payload of a move."""
    return sum(p.lstat().st_size for p in content.files_under(root))


def measure_move(lab: LxdLab, case: str, pool: str, runs: int, with_content: bool) -> Result:
    name = f"{'full' if with_content else 'empty'}-{pool}"
    rootfs = lab.create("a", name, pool)
    digest = content.tree_digest(fill(rootfs)) if with_content else content.tree_digest(rootfs)
    payload = tree_bytes(rootfs)
    args = ("move", f"a:{name}", f"b:{name}", "-s", pool, "-q")
    result = Result(case, pool, LXD, command="lxc " + " ".join(args), bytes=payload)
    try:
        for i in range(runs):
            result.add(lab.timed(*args))
            if i == 0:
                moved = lab.rootfs("b", pool, name)
                got = content.tree_digest(moved / CONTENT_DIR if with_content else moved)
                if got != digest:
                    raise RuntimeError(f"lxc move {name} on {pool}: target tree differs from the source")
            lab.lxc("move", f"b:{name}", f"a:{name}", "-s", pool, "-q")
    finally:
        delete_everywhere(lab, name)
    return result


def measure_refresh(lab: LxdLab, pool: str, runs: int) -> Result:
    name = f"refresh-{pool}"
    source = fill(lab.create("a", name, pool))
    args = ("copy", f"a:{name}", f"b:{name}", "--refresh", "-q")
    result = Result(REFRESH, pool, LXD, command="lxc " + " ".join(args))
    try:
        lab.lxc("copy", f"a:{name}", f"b:{name}", "-s", pool, "-q")
        for i in range(runs):
            content.change_fraction(source, 0.01, seed=i + 1)
            result.add(lab.timed(*args))
        if content.tree_digest(lab.rootfs("b", pool, name) / CONTENT_DIR) != content.tree_digest(source):
            raise RuntimeError(f"lxc copy --refresh {name} on {pool}: target differs from the source")
    finally:
        delete_everywhere(lab, name)
    return result


def measure_pool(lab: LxdLab, pool: str, runs: int) -> list[Result]:
    """Every LXD case on one pool kind; the lab must have the image imported as ``bb`` on a and b."""
    return [
        measure_move(lab, MOVE_FULL, pool, runs, with_content=True),
        measure_move(lab, MOVE_EMPTY, pool, runs, with_content=False),
        measure_refresh(lab, pool, runs),
    ]


def delete_everywhere(lab: LxdLab, name: str) -> None:
    for remote in lab.daemons:
        try:
            lab.delete(remote, name)
        except RuntimeError:
            pass  # not there
