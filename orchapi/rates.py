"""Bandwidth as operators write it: ``50MiB`` (per second), ``2.5MiB/s``, ``800KiB``, ``1GB``, or bytes.

Shared by the CLI (``--bwlimit``) and the agent (``migration.bwlimit``), so both accept the same words.
"""

from __future__ import annotations

import re

from orchapi.errors import BadRequest

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*?)\s*(?:/s)?\s*$", re.IGNORECASE)
#: the smallest limit taken (below it a transfer would crawl for hours: surely a typo)
MIN_RATE = 16 * 1024


def parse_rate(text: str) -> int:
    """Bytes per second; :class:`BadRequest` for anything else, or for a rate below :data:`MIN_RATE`."""
    match = _RATE.match(text or "")
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BadRequest(f"{text!r} is not a bandwidth", "write it like 50MiB, 800KiB or 1GB (per second)")
    rate = int(float(match.group(1)) * _UNITS[unit])
    if rate < MIN_RATE:
        raise BadRequest(f"a bandwidth limit of {text} is below the least accepted ({MIN_RATE // 1024}KiB/s)")
    return rate
