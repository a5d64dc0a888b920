"""btrfs: ``btrfs send`` on the source, ``btrfs receive`` on the target, when both agents store on btrfs.

The source sends read-only subvolumes only: its snapshots as they are, the container's rootfs as a
temporary read-only snapshot (deleted afterwards). Each volume after the first is sent incrementally
(``-p <previous volume>``), so a snapshot chain costs only its differences. The target reads the stream
as it passes (hostagent/transfer/btrfs_stream.py) and refuses device nodes, foreign owners and host file
capabilities of unprivileged containers before ``btrfs receive`` sees them. The target receives each
volume into its own empty directory inside the staging dir (``btrfs receive --chroot``, so a hostile
stream cannot name paths outside it; every volume is sent named ``rootfs`` and must arrive so named);
incremental streams find their parent among the volumes received before. Nothing is pre-filled (LXD
does the same): the first volume travels in full.

Refreshes use rsync instead: an incremental send needs a parent the target received from this same
source, which an existing container generally is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from hostagent.migration.protocol import CHUNK
from hostagent.runtimes.base import ExportVolume, ImportStaging
from hostagent.storage.btrfs import is_subvolume
from hostagent.transfer import compression, link
from hostagent.transfer.base import (
    Child,
    ReceiveContext,
    SendContext,
    SendPreparation,
    TransferMethod,
    WriterSink,
    file_size_limit,
    relay_child_stdout,
)
from hostagent.transfer.btrfs_stream import SendStreamGuard
from orchapi.errors import BadRequest, InternalError, OrchError, Unavailable

FAILED = "btrfs receive on the target failed"


class _Discard:
    """The guard's sink over a data link: the relay delivers, the guard only inspects."""

    async def write(self, data: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


class BtrfsMethod(TransferMethod):
    name = "btrfs"
    rank = 10  # the cheapest: incremental between snapshots, no file-by-file walk on either side
    tool = "btrfs"
    refreshes = False  # an incremental send needs a parent the target received from this source
    same_layout = True  # a stream is a whole subvolume: an LXD volume holds more than the rootfs
    prefill = False

    async def prepare_send(self, agent: Any, container: str) -> SendPreparation:
        """Only read-only subvolumes can be sent: a scratch dir for the temporary snapshots of those that
        are not."""
        return _ReadOnlyVolumes(agent, await agent.blocking(agent.runtime.export_scratch, container))

    def destination(
        self,
        runtime: Any,
        staging: ImportStaging,
        snapshot: str | None,
        start: tuple[Path, dict[str, int] | None] | None,
        image: str | None,
        idmap: dict[str, int] | None,
    ) -> Path:
        """An empty directory: ``btrfs receive`` makes the subvolume in it (nothing to pre-fill)."""
        return runtime.import_receive_dir(staging, snapshot)

    async def send(self, ctx: SendContext) -> None:
        ch = ctx.channel
        argv = ["btrfs", "send", "-q"]
        if ctx.parent is not None:
            argv += ["-p", str(ctx.parent)]
        argv.append(str(ctx.path))
        sock = await link.offer(ch, ctx.link, "btrfs", incremental=ctx.parent is not None)
        if sock is not None:
            await link.send_output(ch, sock, argv, "btrfs send", FAILED, ctx.compression)
            return
        child = await compression.spawn_sender(
            ctx.compression, argv, "btrfs send", stdout=asyncio.subprocess.PIPE
        )
        try:
            await relay_child_stdout(ch, child, "btrfs send", FAILED)
        finally:
            await child.kill()

    async def receive(self, ctx: ReceiveContext) -> Path:
        ch = ctx.channel
        sock = await link.accept(await ch.recv("btrfs"), ctx.link, ctx.what)
        argv = [*file_size_limit(ctx.allowance), "btrfs", "receive", "--chroot", "-q", str(ctx.dest)]
        if ctx.compression:
            await self._receive_compressed(ctx, sock, argv)
            return self._received(ctx)
        stdin_r, stdin_w = link.pipe() if sock is not None else (None, None)
        relaying = None
        try:
            child = await Child.spawn(
                argv, "btrfs receive", stdin=stdin_r if sock is not None else asyncio.subprocess.PIPE
            )
        except BaseException:
            link.close(stdin_r, stdin_w)
            raise
        link.close(stdin_r)
        try:
            guard = _guard(ctx, WriterSink(child.proc.stdin) if child.proc.stdin is not None else _Discard())
            if sock is None:
                ch.set_sink(guard)
                await ch.send("ready", link=False)
                code = await child.wait()
            else:
                await ch.send("ready", link=True)
                assert stdin_w is not None
                relaying = link.receive_relay(ch, sock, stdin_w, ctx.what, ctx.allowance, guard.inspect)
                stdin_w = None
                code, _ = await asyncio.gather(child.wait(), relaying)
            await _conclude(ctx, child, code, guard)
        finally:
            ch.set_sink(None)
            await link.settle(relaying)
            link.close(stdin_w)
            await child.kill()
        return self._received(ctx)

    @staticmethod
    def _received(ctx: ReceiveContext) -> Path:
        """The stream names the subvolume: accept nothing but exactly one subvolume called "rootfs"."""
        entries = os.listdir(ctx.dest)
        received = ctx.dest / "rootfs"
        if entries != ["rootfs"] or os.path.islink(received) or not is_subvolume(received):
            raise InternalError(f"btrfs receive of {ctx.what} did not produce exactly one subvolume 'rootfs'")
        return received

    async def _receive_compressed(self, ctx: ReceiveContext, sock: Any, argv: list[str]) -> None:
        """What arrives goes to ``zstd -d``, whose output is counted against the allowance (decompressed
        bytes are the ones that land) and passed through the stream guard to ``btrfs receive``."""
        ch = ctx.channel
        child = await Child.spawn(argv, "btrfs receive", stdin=asyncio.subprocess.PIPE)
        unzstd: compression.Decompressor | None = None
        relaying = feeding = None
        try:
            assert child.proc.stdin is not None
            guard = _guard(ctx, WriterSink(child.proc.stdin))
            unzstd = await compression.Decompressor.start(
                ctx.what, stdout=asyncio.subprocess.PIPE, from_link=sock is not None
            )
            if sock is None:
                assert unzstd.child.proc.stdin is not None
                ch.set_sink(WriterSink(unzstd.child.proc.stdin))
                await ch.send("ready", link=False)
            else:
                await ch.send("ready", link=True)
                in_fd, unzstd.in_fd = unzstd.in_fd, None
                assert in_fd is not None
                relaying = link.receive_relay(ch, sock, in_fd, ctx.what, ctx.allowance)
            feeding = asyncio.ensure_future(_feed(unzstd, guard, ctx))
            waiting = [child.wait(), feeding] + ([relaying] if relaying is not None else [])
            try:
                code, ctx.payload_bytes, *_ = await asyncio.gather(*waiting)
            except OrchError:
                if ch.ws.closed:
                    raise
                with contextlib.suppress(ConnectionError):  # best effort, as for a refusal below
                    await ch.send("exit", code=1, message="refused")
                raise
            await _conclude(ctx, child, code, guard)
        finally:
            ch.set_sink(None)
            await link.settle(relaying)
            await link.settle(feeding)
            if unzstd is not None:
                await unzstd.kill()
            await child.kill()


async def _conclude(ctx: ReceiveContext, child: Child, code: int, guard: SendStreamGuard) -> None:
    """After ``btrfs receive`` exited with ``code``: tell the source, then raise what went wrong (the
    channel's refusal first, the child's failure next) or check the stream's end."""
    ch = ctx.channel
    ch.set_sink(None)
    if ch.ws.closed:
        raise Unavailable("the connection to the source agent closed unexpectedly")
    await ch.send("exit", code=code, message=child.last_error_line() if code else "")
    if ch.refused is not None:
        raise ch.refused
    if code != 0:
        raise child.failure(code, ctx.what)
    guard.finish()


def _guard(ctx: ReceiveContext, sink: Any) -> SendStreamGuard:
    """The stream guard for one received volume: owners within the source's id map (unprivileged)."""
    idmap = ctx.idmap
    return SendStreamGuard(
        sink,
        ctx.what,
        range(idmap.host_base, idmap.host_base + idmap.size) if idmap else None,
        range(idmap.gid_host_base, idmap.gid_host_base + idmap.size) if idmap else None,
        idmap.host_base if idmap else None,
        ctx.tree,
    )


async def _feed(unzstd: compression.Decompressor, guard: SendStreamGuard, ctx: ReceiveContext) -> int:
    """zstd's output through the guard, at most the volume's allowance; the bytes passed on."""
    out = unzstd.child.proc.stdout
    assert out is not None
    total = 0
    while chunk := await out.read(CHUNK):
        total += len(chunk)
        if ctx.allowance is not None and total > ctx.allowance:
            raise BadRequest(
                f"the source sent more than it declared for {ctx.what} (over {ctx.allowance} bytes "
                "once decompressed); the transfer was stopped"
            )
        await guard.write(chunk)
    await unzstd.finish(ctx.what)
    await guard.close()
    return total


class _ReadOnlyVolumes(SendPreparation):
    """Each volume as a read-only subvolume named ``rootfs``: itself if it is one, else a temporary
    read-only snapshot in the export's scratch dir (the target receives subvolumes under the name they
    were sent with)."""

    def __init__(self, agent: Any, scratch: Path) -> None:
        self.agent = agent
        self.scratch: Path | None = scratch

    async def path(self, index: int, volume: ExportVolume) -> Path:
        agent = self.agent
        path = volume.subvolume or volume.path
        if path.name != "rootfs" or not await agent.blocking(readonly_subvolume, path):
            assert self.scratch is not None
            path = self.scratch / str(index) / "rootfs"
            path.parent.mkdir(mode=0o700)
            await agent.blocking(agent.storage.snapshot_volume, volume.subvolume or volume.path, path)
        return path

    async def release(self) -> None:
        if self.scratch is not None:
            await self.agent.blocking(self.agent.runtime.export_scratch_remove, self.scratch)
            self.scratch = None


def readonly_subvolume(path: Path) -> bool:
    """Whether ``path`` can be sent as it is (a read-only subvolume)."""
    from hostagent.storage.btrfs import BtrfsDriver

    with contextlib.suppress(Exception):
        return is_subvolume(path) and BtrfsDriver._is_readonly(path)
    return False
