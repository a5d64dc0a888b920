"""LXD-shaped response envelopes and request-body helpers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from hostagent.operations import Operation
from orchapi.errors import BadRequest


def sync(metadata: Any = None, status: int = 200) -> web.Response:
    """``{"type": "sync", ...}``: the result is in the response itself."""
    body = {"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}
    return web.json_response(body, status=status)


def async_op(op: Operation) -> web.Response:
    """``202`` with the operation's URL: the work continues in the background."""
    url = f"/1.0/operations/{op.id}"
    body = {
        "type": "async",
        "status": "Operation created",
        "status_code": 100,
        "operation": url,
        "metadata": op.to_api(),
    }
    return web.json_response(body, status=202, headers={"Location": url})


def error(message: str, status: int) -> web.Response:
    """``{"type": "error", "error": ..., "error_code": ...}`` with the same HTTP status."""
    return web.json_response({"type": "error", "error": message, "error_code": status}, status=status)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; :class:`BadRequest` for anything else."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def recursion(request: web.Request) -> int:
    """LXD's ``?recursion=N``: 0 lists URLs, 1 lists full objects."""
    value = request.query.get("recursion", "0")
    if value not in ("0", "1", "2"):
        raise BadRequest("recursion must be 0, 1 or 2")
    return int(value)


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter (``?force=1``, ``?force=true``)."""
    return request.query.get(name, "").lower() in ("1", "true", "yes")
