"""CPU-seconds beside wall time: how much of the machine a timed run kept busy.

Measured system-wide (``/proc/stat``: user, nice, system, irq, softirq and steal time of every CPU), not
per process: a move spreads its work over the CLI, a worker, two agents, their rsync/tar/btrfs children
and the kernel's network and crypto work, and only the machine-wide count sees all of it (LXD's daemons
and their forks likewise). The price is that anything else running counts too, so benchmarks run on an
otherwise idle machine; the median over runs keeps a stray spike out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
#: /proc/stat "cpu" columns that are work: user nice system idle iowait irq softirq steal
_BUSY = (0, 1, 2, 5, 6, 7)


def busy_seconds() -> float:
    """CPU-seconds the whole machine has spent working since boot."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    return sum(int(fields[i]) for i in _BUSY if i < len(fields)) / _TICKS


@dataclass
class Sample:
    """One timed run: its wall time and the CPU-seconds the machine spent during it."""

    wall: float
    cpu: float


def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Sample:
    """Run ``fn`` once and measure it."""
    cpu0, t0 = busy_seconds(), time.perf_counter()
    fn(*args, **kwargs)
    return Sample(time.perf_counter() - t0, busy_seconds() - cpu0)
