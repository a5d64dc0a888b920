"""``orch image``: import, list, delete images and manage aliases; plus image relay between remotes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from orchapi.errors import BadRequest
from orchapi.imagecopy import carry_image, has_image
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.output import emit, format_option
from orchestrator.cli.progress import ProgressReader, byte_progress
from orchestrator.refs import parse_remote


def _split(text: str, ctx: Context) -> tuple[str, str]:
    """``[REMOTE:]REF`` → (remote, ref)."""
    if ":" in text:
        remote, ref = text.split(":", 1)
        ctx.config.get(remote)
        return remote, ref
    return ctx.config.default_remote, text


def upload(ctx: Context, remote: str, path: Path, aliases: list[str]) -> str:
    """Stream a tarball to ``remote`` with a progress bar; returns the image fingerprint."""
    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    client = ctx.client(remote)
    with fh, byte_progress(f"Uploading {path.name}", size) as advance:
        result = client.upload_image(ProgressReader(fh, size, advance), list(aliases), timeout=3600)
    return result["fingerprint"]


def ensure_image(ctx: Context, source_remote: str, ref: str, target_remote: str) -> str:
    """Make sure ``target_remote`` has the image ``ref`` of ``source_remote``; returns its fingerprint.

    If the target lacks it, the client relays the tarball (export from the source, import to the
    target), so ``orch launch foo:bb bar:c1`` works like ``lxc launch``.
    """
    source = ctx.client(source_remote)
    fingerprint = source.image(ref)["fingerprint"]
    if source_remote == target_remote:
        return fingerprint
    target = ctx.client(target_remote)
    if has_image(target, fingerprint):
        return fingerprint

    @contextlib.contextmanager
    def bar(size: int | None):  # type: ignore[no-untyped-def]
        with byte_progress(f"Copying image {fingerprint[:12]}", size) as advance:
            yield advance

    with contextlib.ExitStack() as stack:
        carry_image(source, target, fingerprint, lambda size: stack.enter_context(bar(size)), target_remote)
    return fingerprint


@click.group()
def image() -> None:
    """Manage images."""


@image.command("import")
@click.argument("tarball", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target", required=False)
@click.option("--alias", "aliases", multiple=True, help="Alias for the new image (repeatable).")
@pass_ctx
def image_import(ctx: Context, tarball: Path, target: str | None, aliases: tuple[str, ...]) -> None:
    """Import a unified image TARBALL into [REMOTE:]."""
    remote = parse_remote(target, ctx.config) if target else ctx.config.default_remote
    if not os.path.isfile(tarball):
        raise BadRequest(f"{tarball} is not a file")
    fingerprint = upload(ctx, remote, tarball, list(aliases))
    click.echo(f"Image imported with fingerprint: {fingerprint}")


@image.command("list")
@click.argument("target", required=False)
@format_option
@pass_ctx
def image_list(ctx: Context, target: str | None, fmt: str) -> None:
    """List images of [REMOTE:]."""
    remote = parse_remote(target, ctx.config) if target else ctx.config.default_remote
    images = ctx.client(remote).images()
    rows = [
        [
            ",".join(a["name"] for a in i.get("aliases", [])),
            i["fingerprint"][:12],
            i.get("properties", {}).get("description", ""),
            i["architecture"],
            f"{i['size'] / 1024 / 1024:.2f}MiB",
            i["uploaded_at"],
        ]
        for i in images
    ]
    emit(fmt, ["ALIAS", "FINGERPRINT", "DESCRIPTION", "ARCHITECTURE", "SIZE", "UPLOAD DATE"], rows, images)


@image.command("delete")
@click.argument("refs", nargs=-1, required=True)
@pass_ctx
def image_delete(ctx: Context, refs: tuple[str, ...]) -> None:
    """Delete images ([REMOTE:]ALIAS|FINGERPRINT)."""
    for text in refs:
        remote, ref = _split(text, ctx)
        ctx.client(remote).delete_image(ref)


@image.group("alias")
def alias() -> None:
    """Manage image aliases."""


@alias.command("create")
@click.argument("name")
@click.argument("fingerprint")
@pass_ctx
def alias_create(ctx: Context, name: str, fingerprint: str) -> None:
    """Create alias [REMOTE:]NAME for an image."""
    remote, alias_name = _split(name, ctx)
    ctx.client(remote).create_alias(alias_name, fingerprint)


@alias.command("delete")
@click.argument("name")
@pass_ctx
def alias_delete(ctx: Context, name: str) -> None:
    """Delete alias [REMOTE:]NAME."""
    remote, alias_name = _split(name, ctx)
    ctx.client(remote).delete_alias(alias_name)


@alias.command("list")
@click.argument("target", required=False)
@format_option
@pass_ctx
def alias_list(ctx: Context, target: str | None, fmt: str) -> None:
    """List aliases of [REMOTE:]."""
    remote = parse_remote(target, ctx.config) if target else ctx.config.default_remote
    aliases = ctx.client(remote).aliases()
    rows = [[a["name"], a["target"][:12], a.get("description", "")] for a in aliases]
    emit(fmt, ["ALIAS", "FINGERPRINT", "DESCRIPTION"], rows, aliases)
