"""LXD-shaped response envelopes and request-body helpers.

:func:`json_body` is the one reader of JSON request bodies: it caps their size (smaller for untrusted
callers, who may only enrol) before reading, and parses them with :func:`hostagent.jsoninput.parse_json`
(no NaN, no deep nesting, no NUL or lone surrogates), so every bad body is a 4xx before any handler.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hostagent.jsoninput import parse_json
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


#: the largest JSON body of a trusted caller: real ones (configs, PEM certificates, migration sources)
#: are a few KiB; image uploads are streamed to disk and never read through here
MAX_JSON_BODY = 1024**2
#: the largest JSON body of an untrusted caller, who may only enrol (a certificate and a password)
MAX_UNTRUSTED_JSON_BODY = 256 * 1024
_READ_CHUNK = 64 * 1024


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; :class:`BadRequest` (413 if too large) for anything else."""
    limit = MAX_JSON_BODY if request.get("trusted") else MAX_UNTRUSTED_JSON_BODY
    raw = await _read_limited(request, limit)
    if not raw:
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 once it passes ``limit`` bytes (announced or not)."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


def recursion(request: web.Request) -> int:
    """LXD's ``?recursion=N``: 0 lists URLs, 1 lists full objects."""
    value = request.query.get("recursion", "0")
    if value not in ("0", "1", "2"):
        raise BadRequest("recursion must be 0, 1 or 2")
    return int(value)


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter (``?force=1``, ``?force=true``)."""
    return request.query.get(name, "").lower() in ("1", "true", "yes")
