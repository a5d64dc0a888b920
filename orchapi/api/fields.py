"""Checks for the fields of a request body that came from a client or a peer (never trusted): each
raises :class:`~orchapi.errors.BadRequest` with one message naming the field and what it must be."""

from __future__ import annotations

from typing import Any

from orchapi.errors import BadRequest

_MISSING = object()


def mapping(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


def flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def whole(body: dict[str, Any], key: str, low: int, high: int, message: str, default: Any = _MISSING) -> Any:
    """An integer in [low, high] (booleans refused: JSON's ``true`` is not 1 here); ``default`` when the
    key is absent (no default: required), and null only where the default is None (null is "unset")."""
    value = body.get(key)
    if default is not _MISSING and (key not in body or (value is None and default is None)):
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(message)
    return value


def seconds(body: dict[str, Any], key: str, default: float, high: float) -> float:
    """A finite number of seconds in [0, high] (parse_json already refused NaN and Infinity)."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise BadRequest(f"{key} must be a number of seconds between 0 and {high:g}")
    return float(value)


def choice(body: dict[str, Any], key: str, allowed: tuple[str, ...], message: str) -> str:
    value = body.get(key)
    if value not in allowed:
        raise BadRequest(message)
    return str(value)
