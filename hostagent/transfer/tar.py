"""tar: the fallback, a plain stream of each volume (no delta, no pre-fill).

The source runs GNU tar (``--numeric-owner --xattrs --xattrs-include=* --sparse``, POSIX format: owners,
modes, nanosecond mtimes, hard links, symlinks, fifos, xattrs including file capabilities and ACLs, which
travel as ``system.posix_acl_*`` xattrs; sparse files as their data and a map of the holes, so they
travel and land as big as their data, not their length). The target reads the stream in a thread with
hostagent/safetar, the same validator and writer as images, under the volume policy built from the
:class:`ReceiveContext`:
no absolute names, no ``..``, nothing written through a symlink or below a non-directory, hard links only
to earlier regular files, every directory opened with ``O_NOFOLLOW`` relative to the volume's own file
descriptor; for an unprivileged container owners inside the source's id range, no device nodes, file
capabilities only namespaced ones for the container's root; at most ``allowance`` data bytes, each
member's size checked at its header; sparse members written with their holes. A refused member stops
the transfer and the staging volume is removed; cancelling the transfer stops the thread within a chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import IO, Any

from hostagent import safetar
from hostagent.migration.protocol import CHUNK
from hostagent.operations import outlast_cancels
from hostagent.runtimes.idmap import IdMap
from hostagent.transfer import compression, link
from hostagent.transfer.base import (
    ReceiveContext,
    SendContext,
    TransferMethod,
    WriterSink,
    fd_writer,
    grow_pipe,
    relay_child_stdout,
)
from orchapi.errors import InternalError, OrchError, Unavailable


def tar_argv(path: Path) -> list[str]:
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={path}",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--sparse",
        "--format=posix",
        "--pax-option=delete=atime,delete=ctime",
        ".",
    ]


def extract(
    stream: IO[bytes],
    dest: Path,
    idmap: IdMap | None,
    allowance: int | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Extract into ``dest`` with the volume policy; returns the number of members.

    ``idmap`` is the source's (None: privileged); ``allowance`` the most data bytes the volume may bring.
    No space becomes InsufficientStorage; a refused member, or a stream beyond its allowance, BadRequest.
    """
    try:
        return safetar.extract(stream, dest, safetar.volume_policy(idmap, allowance), cancel=cancel).members
    except OSError as exc:
        raise InternalError(f"writing the received volume failed: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            stream.close()


FAILED = "extracting on the target failed"


class TarMethod(TransferMethod):
    name = "tar"
    rank = 30  # the fallback: everything travels, every time
    tool = "tar"
    prefill = False
    sends_whole_volumes = True

    async def send(self, ctx: SendContext) -> None:
        ch = ctx.channel
        sock = await link.offer(ch, ctx.link, "tar")
        if sock is not None:
            await link.send_output(ch, sock, tar_argv(ctx.path), "tar (source)", FAILED, ctx.compression)
            return
        child = await compression.spawn_sender(
            ctx.compression, tar_argv(ctx.path), "tar (source)", stdout=asyncio.subprocess.PIPE
        )
        try:
            await relay_child_stdout(ch, child, "tar (source)", FAILED)
        finally:
            await child.kill()

    async def receive(self, ctx: ReceiveContext) -> Path:
        ch = ctx.channel
        sock = await link.accept(await ch.recv("tar"), ctx.link, ctx.what)
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        grow_pipe(write_fd)
        stream = compression.CountingReader(os.fdopen(read_fd, "rb", buffering=CHUNK))
        sink: WriterSink | None = None
        relaying: asyncio.Future[Any] | None = None
        unzstd: compression.Decompressor | None = None
        if ctx.compression:  # what arrives goes to zstd -d, which writes the tar stream to the pipe
            try:
                unzstd = await compression.Decompressor.start(
                    ctx.what, stdout=write_fd, from_link=sock is not None
                )
            finally:
                os.close(write_fd)
            if sock is None:
                assert unzstd.child.proc.stdin is not None
                sink = WriterSink(unzstd.child.proc.stdin)
            else:
                assert unzstd.in_fd is not None
                write_fd, unzstd.in_fd = unzstd.in_fd, None  # the relay's from now on
        elif sock is None:
            sink = WriterSink(await fd_writer(write_fd))
        if sink is not None:
            ch.set_sink(sink)
        cancel = threading.Event()
        work: asyncio.Future[Any] = loop.run_in_executor(
            None, extract, stream, ctx.dest, ctx.idmap, ctx.allowance, cancel
        )
        try:
            await ch.send("ready", link=sock is not None)
            if sock is not None:
                relaying = link.receive_relay(ch, sock, write_fd, ctx.what, ctx.allowance)
                # whichever ends first with an error is the cause (a refused member, a stream too long)
                await asyncio.wait({work, relaying}, return_when=asyncio.FIRST_EXCEPTION)
                if relaying.done() and relaying.exception() is not None:
                    cancel.set()
                    raise relaying.exception()  # type: ignore[misc]
            try:
                # shielded: a cancel must not cancel the future while its thread still writes (the
                # finally below stops the thread and waits for it)
                await asyncio.shield(work)
                if unzstd is not None:
                    # tar pads its end: zstd may find the reader gone after the archive's end, which is
                    # no failure; a stream it could not decode has failed the extraction already
                    with contextlib.suppress(OrchError):
                        await unzstd.finish(ctx.what)
                ctx.payload_bytes = stream.count
            except Exception as exc:  # a stream zstd cannot decode ends early: safetar calls it truncated
                ch.set_sink(None)
                if ch.ws.closed and not isinstance(exc, OrchError):  # a refusal stays the story
                    raise Unavailable("the connection to the source agent closed unexpectedly") from exc
                # best effort: a refused peer often hangs up first, and the refusal is what to report
                with contextlib.suppress(ConnectionError):
                    await ch.send("exit", code=1, message=str(exc))
                raise
            ch.set_sink(None)
            if ch.ws.closed:
                raise Unavailable("the connection to the source agent closed unexpectedly")
            await ch.send("exit", code=0, message="")
            return ctx.dest
        finally:
            ch.set_sink(None)
            if not work.done():
                cancel.set()  # cancelled, or the channel failed: stop at the next chunk
            await link.settle(relaying)
            if sink is not None:
                await sink.close()
            if unzstd is not None:
                await unzstd.kill()
            # the thread stops at the end of the pipe; wait for it so nothing writes after a cleanup
            # (even if cancelled again meanwhile)
            await outlast_cancels(work)
