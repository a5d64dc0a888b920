"""Carrying an image from one agent to another through the client: the source's export streamed into
the target's import, a MiB at a time, its SHA-256 (the fingerprint) checked on the way.

Used by ``orch launch foo:bb bar:c1`` (the CLI, with a progress bar) and by the worker when the target is
not to dial the source for a job's base image (push and relay modes). Both agents trust the client; the
target checks the tarball as it checks any import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from orchapi.errors import BadRequest, NotFound

CHUNK = 1 << 20


def has_image(client: Any, fingerprint: str) -> bool:
    try:
        client.image(fingerprint)
    except NotFound:
        return False
    return True


def carry_image(
    source: Any,
    target: Any,
    fingerprint: str,
    progress: Callable[[int | None], Callable[[int], None]] | None = None,
    what: str = "the target",
) -> int:
    """Stream image ``fingerprint`` from ``source`` to ``target`` (clients of their agents); the bytes.
    ``progress(size)`` gives a callback for each chunk's length."""
    response = source.export_image(fingerprint, timeout=3600)
    size = int(response.headers.get("Content-Length", 0)) or None
    advance = progress(size) if progress is not None else (lambda _n: None)
    digest = hashlib.sha256()
    moved = 0

    def chunks() -> Iterator[bytes]:
        nonlocal moved
        for chunk in response.iter_content(CHUNK):
            digest.update(chunk)
            moved += len(chunk)
            advance(len(chunk))
            yield chunk

    try:
        result = target.upload_image(chunks(), [], timeout=3600)
    finally:
        response.close()
    if result["fingerprint"] != fingerprint or digest.hexdigest() != fingerprint:
        raise BadRequest(f"image {fingerprint[:12]} arrived corrupted on {what}")
    return moved
