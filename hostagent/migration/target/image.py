"""Pulling a container's base image from the source agent (``POST /1.0/images`` with a migration source).

The image is the source's tarball byte for byte: streamed to the upload dir with its SHA-256 checked as
it arrives, then imported with every check an upload gets (hostagent/images/). One pull per fingerprint
at a time, so the copies of an evacuation wait for the first pull and then find the image cached.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import os
import ssl
import uuid
from typing import Any

import aiohttp

from hostagent.images.store import has_image
from hostagent.migration.modes import require_mode
from hostagent.migration.target.connect import check_peer, client, connect_error
from hostagent.migration.target.request import SourceRef, parse_image_pull
from hostagent.operations import Operation, run_cancellable
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, error_for_status

CHUNK = 1024 * 1024


def start_image_pull(agent: Any, source: dict[str, Any]) -> Operation:
    ref, fingerprint = parse_image_pull(source)

    async def work(op: Operation) -> dict[str, Any]:
        # one pull per fingerprint at a time: concurrent copies of containers made from one image (an
        # evacuation) wait for the first pull and then find the image cached
        async with _image_locks[fingerprint]:
            if await agent.blocking(has_image, agent.images, fingerprint):
                return {"fingerprint": fingerprint, "cached": True}
            require_mode(await agent.blocking(agent.trust.server_config), "pull")  # it would dial out
            return await pull_image(agent, op, ref, fingerprint)

    return agent.operations.start(f"Pulling image {fingerprint[:12]} from {ref.where}", work, {"images": []})


_image_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)


async def pull_image(agent: Any, op: Operation, ref: SourceRef, fingerprint: str) -> dict[str, Any]:
    """Stream ``GET <migration>/image`` to the upload dir, check the SHA-256, import with every check."""
    upload = agent.images.upload_dir() / f"pull-{uuid.uuid4().hex}"
    op.progress(stage="image", bytes_received=0, bytes_sent=0)
    digest = hashlib.sha256()
    received = 0
    try:
        async with client(agent, ref) as session:
            try:
                response = await session.get(
                    ref.url + "/image", headers={"Authorization": f"Bearer {ref.token}"}
                )
            except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
                raise connect_error(ref, exc) from None
            async with response:
                if response.connection is not None and response.connection.transport is not None:
                    check_peer(response.connection.transport.get_extra_info, ref.fingerprint)
                if response.status != 200:
                    try:
                        message = (await response.json()).get("error")
                    except (ValueError, aiohttp.ContentTypeError):
                        message = None
                    raise error_for_status(
                        response.status, f"source agent: {message or f'{response.status} {response.reason}'}"
                    )
                total = response.content_length
                if total is None:  # an image of unknown size could fill the disk before it is checked
                    raise BadRequest(f"the source sent image {fingerprint[:12]} without its size")
                op.progress(total_bytes=total)
                free = agent.storage.free_bytes()
                if total > free:
                    raise InsufficientStorage(
                        f"no space left on the target for image {fingerprint[:12]}: "
                        f"it needs {total} bytes, {free} are free"
                    )
                with open(upload, "wb") as fh:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        received += len(chunk)
                        if received > total:
                            raise BadRequest(f"the source sent more of image {fingerprint[:12]} than it said")
                        fh.write(chunk)
                        digest.update(chunk)
                        op.progress(bytes_received=received)
        if digest.hexdigest() != fingerprint:
            raise BadRequest(
                f"the image received from the source does not match fingerprint {fingerprint[:12]} "
                f"(got {digest.hexdigest()[:12]})"
            )
        try:
            # validated like an upload (bounded, hostile archives refused) and stoppable by cancelling
            record = await run_cancellable(
                agent.executor, agent.images.import_tarball, upload, [], fingerprint
            )
        except Conflict:
            # imported meanwhile through another path (an upload): wait for that import to commit
            for _ in range(600):
                if await agent.blocking(has_image, agent.images, fingerprint):
                    return {"fingerprint": fingerprint, "cached": True, "bytes": received}
                await asyncio.sleep(0.5)
            raise
        return {
            "fingerprint": record.fingerprint,
            "cached": False,
            "bytes": received,
            "image": record.to_api(),
        }
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                f"no space left on the target while receiving image {fingerprint[:12]}"
            ) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload)
