"""Transfer modes, as agents and workers both name them: who dials whom (orchestrator/transfers/), and
the server key ``migration.modes`` by which an agent says which it takes part in.

A comma-separated subset of ``pull``, ``push`` and ``relay`` (empty: all three). Shared, like
orchapi/rates.py, so that the agent refusing a mode and the worker's ``auto`` skipping it read the key
the same way.
"""

from __future__ import annotations

from orchapi.errors import BadRequest

MODES_KEY = "migration.modes"
#: the largest migration websocket message either agent accepts, and so the largest frame a relaying
#: worker carries between them (hostagent/migration/protocol.py, orchestrator/transfers/relay.py)
MAX_MESSAGE = 8 * 1024 * 1024
#: every mode, in the order ``auto`` tries them
ALL = ("pull", "push", "relay")


def parse_modes(value: str) -> tuple[str, ...]:
    """The modes a stored value allows (empty: all); :class:`BadRequest` for an unknown word."""
    words = [w.strip() for w in value.split(",") if w.strip()]
    unknown = [w for w in words if w not in ALL]
    if unknown:
        raise BadRequest(f"unknown transfer mode {unknown[0]!r} in {MODES_KEY}", "use pull, push and relay")
    return tuple(m for m in ALL if m in words) if words else ALL
