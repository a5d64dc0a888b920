"""``/1.0/images``: import unified tarballs, list, inspect and delete images, and manage aliases.

An upload is streamed to disk in chunks (never held in memory), then validated and unpacked by an
operation. Hostile or corrupt archives are refused with a 400 and leave nothing behind.
"""

from __future__ import annotations

import errno
import os
import uuid
from typing import Any

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY
from hostagent.api.responses import async_op, json_body, recursion, sync
from hostagent.operations import Operation, run_cancellable
from orchapi.errors import BadRequest, InsufficientStorage
from orchapi.names import check_alias_name

routes = web.RouteTableDef()

CHUNK = 1024 * 1024


@routes.get("/1.0/images")
async def list_images(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    images = await agent.blocking(agent.images.list)
    if recursion(request):
        return sync([i.to_api() for i in images])
    return sync([f"/1.0/images/{i.fingerprint}" for i in images])


@routes.post("/1.0/images")
async def import_image(request: web.Request) -> web.Response:
    """Body: the tarball (``application/octet-stream``); ``?alias=NAME`` (repeatable) adds aliases.

    With ``Content-Type: application/json`` and ``{"source": {"type": "migration", ...}}`` the agent pulls
    the image from a source agent instead (see hostagent/migration/target/image.py).
    """
    agent = request.app[AGENT_KEY]
    if request.content_type == "application/json":
        body = await json_body(request)
        source = body.get("source")
        if not isinstance(source, dict) or source.get("type") != "migration":
            raise BadRequest(
                "a JSON body needs source.type 'migration'", "send a tarball as application/octet-stream"
            )
        from hostagent.images.store import has_image
        from hostagent.migration.target import start_image_pull
        from hostagent.migration.target.image import parse_image_pull

        _ref, fingerprint = parse_image_pull(source)
        if await agent.blocking(has_image, agent.images, fingerprint):
            # the usual case of a move: nothing to pull, so no operation for the client to wait on
            return sync({"fingerprint": fingerprint, "cached": True})
        return async_op(start_image_pull(agent, source))
    aliases = [check_alias_name(a) for a in request.query.getall("alias", [])]
    for alias in aliases:
        await agent.blocking(_alias_must_be_free, agent, alias)
    length = request.content_length
    if length is not None and length > agent.storage.free_bytes():
        raise InsufficientStorage(f"image of {length} bytes does not fit in the agent's free space")
    upload = agent.images.upload_dir() / f"upload-{uuid.uuid4().hex}"
    await _receive(request, upload)
    if upload.stat().st_size == 0:
        upload.unlink()
        raise BadRequest("empty upload", "send the image tarball as the request body")

    async def work(op: Operation) -> dict[str, Any]:
        # cancelling the operation stops the validation and unpacking within a chunk, and waits for the
        # import to remove what it made
        try:
            record = await run_cancellable(agent.executor, agent.images.import_tarball, upload, aliases)
        finally:
            _unlink(upload)  # the import consumes it; it is still there only if the import never began
        return {"fingerprint": record.fingerprint, "image": record.to_api()}

    return async_op(agent.operations.start("Importing image", work, {"images": []}))


async def _receive(request: web.Request, path: os.PathLike[str]) -> None:
    """Stream the body to ``path``; a full disk or a broken upload removes the partial file."""
    try:
        with open(path, "wb") as fh:
            async for chunk in request.content.iter_chunked(CHUNK):
                fh.write(chunk)
    except OSError as exc:
        _unlink(path)
        if exc.errno == errno.ENOSPC:
            raise InsufficientStorage("no space left on the agent while receiving the image") from None
        raise
    except BaseException:
        _unlink(path)
        raise


def _unlink(path: os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _alias_must_be_free(agent: Any, alias: str) -> None:
    from orchapi.errors import Conflict, NotFound

    try:
        agent.images.alias_get(alias)
    except NotFound:
        return
    raise Conflict(f"image alias {alias} already exists")


@routes.get("/1.0/images/aliases")
async def list_aliases(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    aliases = await agent.blocking(agent.images.alias_list)
    if recursion(request):
        return sync(aliases)
    return sync([f"/1.0/images/aliases/{a['name']}" for a in aliases])


@routes.post("/1.0/images/aliases")
async def create_alias(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    body = await json_body(request)
    name = check_alias_name(body.get("name"))
    target = body.get("target")
    if not isinstance(target, str) or not target:
        raise BadRequest("target must be an image fingerprint")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise BadRequest("description must be a string")
    fingerprint = (await agent.blocking(agent.images.get, target)).fingerprint
    await agent.blocking(agent.images.alias_create, name, fingerprint, description)
    return sync(await agent.blocking(agent.images.alias_get, name), status=201)


@routes.get("/1.0/images/aliases/{alias:.+}")
async def get_alias(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return sync(await agent.blocking(agent.images.alias_get, check_alias_name(request.match_info["alias"])))


@routes.delete("/1.0/images/aliases/{alias:.+}")
async def delete_alias(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    await agent.blocking(agent.images.alias_delete, check_alias_name(request.match_info["alias"]))
    return sync({})


@routes.get("/1.0/images/{ref}")
async def get_image(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return sync((await agent.blocking(agent.images.get, request.match_info["ref"])).to_api())


@routes.get("/1.0/images/{ref}/export")
async def export_image(request: web.Request) -> web.FileResponse:
    """The image tarball itself, byte for byte (its SHA-256 is the fingerprint)."""
    agent = request.app[AGENT_KEY]
    record = await agent.blocking(agent.images.get, request.match_info["ref"])
    # an LXD-backed agent may first export the image from LXD into its cache: not in the event loop
    return web.FileResponse(await agent.blocking(agent.images.tarball_path, record.fingerprint))


@routes.delete("/1.0/images/{ref}")
async def delete_image(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    fingerprint = (await agent.blocking(agent.images.get, request.match_info["ref"])).fingerprint

    async def work(op: Operation) -> None:
        await agent.blocking(agent.images.delete, fingerprint)

    return async_op(agent.operations.start(f"Deleting image {fingerprint[:12]}", work, {"images": []}))
