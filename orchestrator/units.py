"""Sizes and rates as operators read them: binary units throughout (MiB and MiB/s, never MB/s)."""

from __future__ import annotations


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n}"


def human_rate(bytes_per_second: float) -> str:
    return f"{human_size(bytes_per_second)}/s"
