"""Parsing JSON that clients and peer agents send: the limits that keep bad documents from the handlers.

Python's :func:`json.loads` accepts more than a handler can safely take: ``NaN`` and ``Infinity``
(a ``NaN`` timeout never expires), nesting deep enough to raise :class:`RecursionError` (a 500, or a
crash in later recursive code), and strings holding NUL or an unpaired surrogate (``"\\ud800"``), which
no path, argv or UTF-8 encoder takes (``ValueError: embedded null byte`` → 500). :func:`parse_json`
refuses all of these with one :class:`~orchapi.errors.BadRequest` naming where the problem is, so every
reader of untrusted JSON (the API's request bodies, the migration channel's control messages) has the
same rules. No document the agent exchanges needs a NUL, a lone surrogate or more than a few levels.
"""

from __future__ import annotations

import json
import re
from typing import Any

from orchapi.errors import BadRequest

#: deepest nesting accepted: real documents are 3-4 levels deep (json.loads itself gives up near 1000)
MAX_DEPTH = 32
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


def parse_json(raw: bytes | str, what: str = "request body") -> Any:
    """``raw`` parsed; :class:`BadRequest` for invalid, non-finite, too deep or unsafe documents."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN/Infinity
        raise BadRequest(f"{what} is not valid JSON") from None
    check_json(data, what)
    return data


def check_json(data: Any, what: str = "request body") -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and strings (keys too) holding NUL or a lone
    surrogate. Iterative, so that a deep document cannot exhaust the stack here either."""
    todo: list[tuple[Any, str, int]] = [(data, "", 0)]
    while todo:
        value, where, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"{what} nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if _BAD_CHARS.search(value):
                raise BadRequest(f"{what}: {_name(where)} holds a NUL character or an unpaired surrogate")
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else key
                if _BAD_CHARS.search(key):
                    raise BadRequest(f"{what}: key {path!r} holds a NUL character or an unpaired surrogate")
                todo.append((item, path, depth + 1))
        elif isinstance(value, list):
            todo.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def has_bad_chars(text: str) -> bool:
    """True if ``text`` holds a NUL or an unpaired surrogate (for strings that did not come as JSON)."""
    return _BAD_CHARS.search(text) is not None


def _name(where: str) -> str:
    return f"field {where!r}" if where else "the document"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
