"""HOOK FOR THE LEAD: the orch half of the benchmark. ``bench/run`` calls ``measure_orch(ctx)``.

Until it is implemented it raises ``NotImplementedError`` and ``bench/run`` prints "orch: skipped".

What to implement, so that the numbers line up with the LXD reference (``bench/lxd_ref.py``):
- start two ``orch-agent``s (e.g. ``tests/procs.AgentProcess`` or the playground's way) with data dirs
  under ``ctx.workdir`` (already 0755 and under /var/tmp: unprivileged containers need traversable
  parents), on a dir pool and, when ``"btrfs"`` is in ``ctx.pools``, on a loop-mounted btrfs;
  register every stop with ``ctx.cleanup.callback(...)`` so Ctrl-C and errors still stop them;
- import ``ctx.image`` on both as ``bb`` and create a stopped container on the first;
- fill it with ``bench.lxd_ref.fill(rootfs)`` (same bytes, same place, ``/root/bench``, as for LXD);
- per pool, return one ``Result(case, pool, ORCH, samples)`` per case, with these exact case names:
  ``MOVE_FULL`` (time ``orch move a:c b:``, move back untimed), ``MOVE_EMPTY`` (same without content) and
  ``REFRESH`` (copy once untimed, then per run ``content.change_fraction(dir, 0.01, seed=run + 1)``
  untimed and time the refresh); ``ctx.runs`` samples each; time the whole CLI call with
  ``time.perf_counter()`` as the LXD side does. ``bench/run`` then prints "vs LXD" and "vs rsync".
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.stats import Result


@dataclass
class OrchContext:
    """What ``bench/run`` hands the orch half."""

    repo: Path  # the repository root (``repo / ".venv/bin/orch"``, ``repo / "scripts"``...)
    workdir: Path  # a 0755 scratch dir of its own, removed at exit
    image: Path  # the busybox image tarball LXD imported (scripts/build-busybox-image)
    runs: int  # samples per case
    pools: list[str]  # "dir" and/or "btrfs"
    cleanup: ExitStack  # push stop/unmount callbacks here; closed at exit, Ctrl-C included


def measure_orch(ctx: OrchContext) -> list[Result]:
    """HOOK: time ``orch move`` / refresh for every case and pool in ``ctx``; see the module docstring."""
    raise NotImplementedError("orch move is not wired into the benchmark yet")
