"""Results, medians, ratios, and their two outputs: a terminal table and a Markdown section.

Why medians: on a shared 2-core machine one run in five is often disturbed (page cache, another
process); the median ignores it where a mean would not. Min and max are shown so a reader sees the spread.

A result is keyed by (case, pool, tool): ratios compare tools on the same case and pool, e.g.
"orch / LXD" for ``move 52MB`` on ``btrfs``, or a tool against raw rsync of the same tree.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.cpu import Sample

RSYNC = "rsync"
RSYNC_LXD_FLAGS = "rsync-lxdflags"  # rsync with the flags LXD's migration uses (compression included)
LXD = "lxd"
ORCH = "orch"
ORCH_LXD = "orch-lxd"  # orch between LXD-backed agents; one tool per transfer method: "orch-lxd/rsync"...
ORCH_PUSH = "orch/push"  # orch with --mode push (the source dials the target)
ORCH_RELAY = "orch/relay"  # orch with --mode relay (the worker carries the frames)
#: orch's own rows: the default (pull) and the other transfer modes
ORCH_TOOLS = (ORCH, ORCH_PUSH, ORCH_RELAY)

# Case names shared by every tool; a container case compares with the rsync case of the same suffix.
MOVE_FULL = "move 52MB"  # stopped container: busybox base + 50 x 1 MiB + 500 x 4 KiB
MOVE_EMPTY = "move empty"  # stopped container: busybox base only
REFRESH = "refresh 1%"  # target already has the container; 1 % of the content files changed
COPY_FULL = "copy 52MB"  # rsync of the same tree as MOVE_FULL
COPY_EMPTY = "copy empty"  # rsync of the busybox base only
COPY_GIB = "copy 1GiB"  # rsync of 4 x 256 MiB
MOVE_GIB = "move 1GiB"  # stopped container: busybox base + 4 x 256 MiB (orch vs raw rsync only)
CHAIN_EMPTY = "chain empty"  # orch only: submit -> job finished for the empty container (no CLI start-up)


def orch_lxd_tool(method: str) -> str:
    """The tool name of orch moving between LXD hosts with ``method``, e.g. ``orch-lxd/btrfs``."""
    return f"{ORCH_LXD}/{method}"


def compares_with_lxd(tool: str) -> bool:
    """Whether a tool's rows get a "vs LXD" ratio (``lxc move`` of the same case and pool)."""
    return tool in ORCH_TOOLS or tool.startswith(ORCH_LXD + "/")


@dataclass
class Result:
    """One measured case: its samples in seconds (one per run) and what it was."""

    case: str  # e.g. "move 52MB", "move empty", "refresh 1%", "copy 1GiB"
    pool: str  # "dir", "btrfs", or "-" for rsync
    tool: str  # RSYNC, RSYNC_LXD_FLAGS, LXD, ORCH or orch_lxd_tool(method)
    samples: list[float] = field(default_factory=list)
    command: str = ""  # what was timed, for the reader
    bytes: int = 0  # payload, for a throughput column
    #: CPU-seconds the machine spent in each run (bench/cpu.py), beside ``samples``; empty where not timed
    cpu: list[float] = field(default_factory=list)
    #: resident memory of the agents before and at the peak of the runs (bytes), where sampled
    rss: tuple[int, int] | None = None

    def add(self, sample: Sample) -> None:
        self.samples.append(sample.wall)
        self.cpu.append(sample.cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu) if self.cpu else None


def fmt_seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_ratio(num: float | None, den: float | None) -> str:
    """``num / den`` as "1.23x"; "-" when either side is missing."""
    if not num or not den:
        return "-"
    return f"{num / den:.2f}x"


def fmt_cpu(result: Result) -> str:
    """The median CPU-seconds of a result, and per GiB moved when it moved at least one."""
    cpu = result.cpu_median
    if cpu is None:
        return "-"
    text = f"{cpu:.2f}"
    if result.bytes >= 1 << 30:
        text += f" ({cpu / (result.bytes / (1 << 30)):.2f}/GiB)"
    return text


def fmt_rate(nbytes: int, seconds: float) -> str:
    if not nbytes or not seconds:
        return "-"
    return f"{nbytes / seconds / (1 << 20):.0f} MiB/s"


def _find(results: list[Result], case: str, pool: str, tool: str) -> Result | None:
    for r in results:
        if (r.case, r.pool, r.tool) == (case, pool, tool) and r.samples:
            return r
    return None


def _rsync_base(results: list[Result], case: str) -> Result | None:
    """The rsync row a case compares with: same case name (``move 52MB`` <- ``copy 52MB``, etc.)."""
    base = case.split(" ", 1)[1] if " " in case else case
    for r in results:
        if r.tool == RSYNC and r.samples and r.case.split(" ", 1)[-1] == base:
            return r
    return None


HEADERS = ["case", "pool", "tool", "median", "min", "max", "runs", "CPU-s", "rate", "vs rsync", "vs LXD"]


def rows(results: list[Result], tools: tuple[str, ...] | None = None) -> list[list[str]]:
    """Table rows for ``tools``' results (all by default); ratios look at every result."""
    out = []
    for r in results:
        if not r.samples or (tools is not None and r.tool not in tools):
            continue
        base = _rsync_base(results, r.case) if r.tool != RSYNC else None
        lxd = _find(results, r.case, r.pool, LXD) if compares_with_lxd(r.tool) else None
        out.append(
            [
                r.case,
                r.pool,
                r.tool,
                fmt_seconds(r.median),
                fmt_seconds(min(r.samples)),
                fmt_seconds(max(r.samples)),
                str(len(r.samples)),
                fmt_cpu(r),
                fmt_rate(r.bytes, r.median),
                fmt_ratio(r.median, base.median if base else None),
                fmt_ratio(r.median, lxd.median if lxd else None),
            ]
        )
    return out


def format_table(results: list[Result], tools: tuple[str, ...] | None = None) -> str:
    """A plain-text table for the terminal."""
    return text_table(HEADERS, rows(results, tools))


def markdown_table(results: list[Result], tools: tuple[str, ...] | None = None) -> str:
    return md_table(HEADERS, rows(results, tools))


def text_table(headers: list[str], body: list[list[str]]) -> str:
    """Rows of cells as aligned plain text, a rule under the headers."""
    table = [headers] + body
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


def write_markdown_section(path: Path, section: str, body: str, heading: str | None = None) -> None:
    """Replace the text between ``<!-- bench:SECTION:begin/end -->`` in ``path`` with ``body``.

    Only that span changes, so prose others wrote around it survives a re-run. A missing section is
    appended (under ``heading``); a missing file is created.
    """
    begin, end = _markers(section)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(path)


def dump_json(
    path: Path, results: list[Result], environment: dict[str, str], extra: dict[str, object] | None = None
) -> None:
    """Raw samples, for whoever wants to recompute or plot (``extra``: further top-level keys)."""
    data = {"environment": environment, "results": [asdict(r) for r in results], **(extra or {})}
    path.write_text(json.dumps(data, indent=2) + "\n")
