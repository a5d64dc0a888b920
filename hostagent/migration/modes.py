"""Which transfer modes this agent takes part in (``migration.modes``, parsed by orchapi/modes.py).

As a source, ``pull`` lets a target dial it, ``push`` lets it dial a target's sink, ``relay`` lets a
worker carry its stream; as a target, ``pull`` lets it dial a source, ``push`` and ``relay`` let it open
a sink for a source agent or for a relaying worker. A mode left out is refused when it is asked for,
before any byte moves.
"""

from __future__ import annotations

from orchapi.errors import Forbidden
from orchapi.modes import MODES_KEY, parse_modes


def require_mode(server_config: dict[str, str], mode: str) -> None:
    """Refuse ``mode`` if this host's ``migration.modes`` leaves it out."""
    allowed = parse_modes(server_config.get(MODES_KEY, ""))
    if mode not in allowed:
        raise Forbidden(
            f"this host does not take part in {mode} transfers ({MODES_KEY} = {','.join(allowed)})",
            f"use --mode {allowed[0]}, or allow it: `orch config set <host>: {MODES_KEY} "
            f"{','.join((*allowed, mode))}`",
        )
