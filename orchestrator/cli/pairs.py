"""``KEY=VALUE`` options (``-c`` of launch, ``--env`` of exec) as a dict, or one clear error."""

from __future__ import annotations

from orchapi.errors import BadRequest


def parse_pairs(pairs: tuple[str, ...], what: str, usage: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadRequest(f"invalid {what} {pair!r}", f"use {usage}")
        out[key] = value
    return out
