"""The speed targets (issue 10), judged on one run's results: each one met or not, with its figures.

Every ratio compares rows of the same ``bench/run`` (the machine's speed varies ~20 % between runs).
A target whose rows were not measured (``--only``, ``--quick``) is shown as not measured, never as met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.stats import (
    COPY_GIB,
    LXD,
    MOVE_EMPTY,
    MOVE_FULL,
    MOVE_GIB,
    ORCH,
    REFRESH,
    RSYNC,
    Result,
    fmt_seconds,
    md_table,
    text_table,
)

GIB = 1 << 30
MIB = 1 << 20
#: the agents' resident memory may grow this much during the 1 GiB move and still count as flat
FLAT_MEMORY = 64 * MIB


@dataclass
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def _find(results: list[Result], case: str, pool: str, tool: str) -> Result | None:
    return next((r for r in results if (r.case, r.pool, r.tool) == (case, pool, tool) and r.samples), None)


def _ratio(results: list[Result], case: str, pool: str, limit: float, ref_tool: str = LXD,
           ref_case: str | None = None, ref_pool: str | None = None) -> tuple[str, bool | None]:  # fmt: skip
    ours = _find(results, case, pool, ORCH)
    ref = _find(results, ref_case or case, ref_pool or pool, ref_tool)
    if ours is None or ref is None:
        return "not measured", None
    ratio = ours.median / ref.median
    text = f"{fmt_seconds(ours.median)} vs {fmt_seconds(ref.median)} = {ratio:.2f} ×"
    return text, ratio <= limit


def _empty(results: list[Result]) -> tuple[str, bool | None]:
    ours, lxd = _find(results, MOVE_EMPTY, "dir", ORCH), _find(results, MOVE_EMPTY, "dir", LXD)
    if ours is None or lxd is None:
        return "not measured", None
    ratio = ours.median / lxd.median
    text = f"{fmt_seconds(ours.median)} (LXD {fmt_seconds(lxd.median)}, {ratio:.2f} ×)"
    return text, ours.median <= 0.3 and ratio <= 1.0


def _cpu_per_gib(results: list[Result]) -> tuple[str, bool | None]:
    ours = _find(results, MOVE_GIB, "dir", ORCH)
    if ours is None or ours.cpu_median is None or not ours.bytes:
        return "not measured", None
    per = ours.cpu_median / (ours.bytes / GIB)
    rsync = _find(results, COPY_GIB, "-", RSYNC)
    ref = f" (raw rsync {rsync.cpu_median / (rsync.bytes / GIB):.2f})" if rsync and rsync.cpu_median else ""
    return f"{per:.2f} CPU-s/GiB{ref}", per <= 2.5


def _memory(results: list[Result]) -> tuple[str, bool | None]:
    ours = _find(results, MOVE_GIB, "dir", ORCH)
    if ours is None or ours.rss is None:
        return "not measured", None
    base, peak = ours.rss
    return f"{base / MIB:.0f} MiB before, {peak / MIB:.0f} MiB at the peak", peak - base <= FLAT_MEMORY


CHECKS: list[tuple[str, Callable[[list[Result]], tuple[str, bool | None]]]] = [
    ("52 MB / 550 files, dir → dir, CLI wall ≤ 0.3 × LXD", lambda r: _ratio(r, MOVE_FULL, "dir", 0.3)),
    ("same on btrfs pools ≤ 1.0 × LXD", lambda r: _ratio(r, MOVE_FULL, "btrfs", 1.0)),
    ("empty container, CLI wall ≤ 0.3 s and ≤ 1.0 × LXD", _empty),
    (
        "1 GiB ≤ 2.0 × raw rsync",
        lambda r: _ratio(r, MOVE_GIB, "dir", 2.0, RSYNC, COPY_GIB, "-"),
    ),
    ("refresh after 1 % change ≤ 1.0 × LXD (dir)", lambda r: _ratio(r, REFRESH, "dir", 1.0)),
    ("refresh after 1 % change ≤ 1.0 × LXD (btrfs)", lambda r: _ratio(r, REFRESH, "btrfs", 1.0)),
    ("CPU-s per GiB moved (the whole machine) ≤ 2.5", _cpu_per_gib),
    ("agents' memory during 1 GiB flat", _memory),
]


def verdicts(results: list[Result]) -> list[Verdict]:
    out = []
    for target, check in CHECKS:
        measured, met = check(results)
        out.append(Verdict(target, measured, met))
    return out


def _rows(results: list[Result]) -> list[list[str]]:
    word = {True: "yes", False: "no", None: "not measured"}
    return [[v.target, v.measured, word[v.met]] for v in verdicts(results)]


HEADERS = ["target", "measured", "met?"]


def text(results: list[Result]) -> str:
    return text_table(HEADERS, _rows(results))


def markdown(results: list[Result]) -> str:
    return md_table(HEADERS, _rows(results))
