"""rsync: the real rsync binary on both agents, speaking its own protocol through the migration websocket.

Source: the agent runs the rsync *client* as sender, ``rsync -aHS --numeric-ids --delete [-X] [-A] -e
"<python> -I -S rsh.py <fd>" <volume>/ peer:volume``. rsync starts its "remote shell" (:mod:`rsh`), which
hands its stdin/stdout pipes and the server command line rsync wants to run to the agent (SCM_RIGHTS over
an inherited socketpair) and then only waits. The agent reads and writes those pipes itself and relays
them over the websocket: no process copies bytes in between.

Target: the agent validates the command line the peer asks for (``rsync --server`` followed by option
arguments from a fixed allow-list, then ``.`` and a path it ignores: never ``--sender``, which would make
it send its own files, nor anything naming a local path) and runs ``rsync --server <options> . <its own
staging volume>``, relaying its stdin/stdout to the websocket. When the server exits, the target sends its
exit status, which the helper exits with, so the client ends as it would over ssh.

The target's volume is pre-filled (a clone of the image's rootfs or of the previously received snapshot),
so rsync's quick check (size + mtime) skips unchanged files and its delta algorithm sends only changed
blocks of the others. Compressed (rsync's own ``--compress-choice=zstd``) only when negotiated
(hostagent/transfer/compression.py): on a LAN it costs more CPU than it saves.
A pre-filled file with the same size and mtime as the source's but other content would be skipped by the
quick check; the manifest comparison catches that, and the volume is then sent once more with
``--checksum`` (see hostagent/migration/target/volumes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from hostagent.datalink.relay import LOCAL, PEER, Relay
from hostagent.migration.protocol import pump, require
from hostagent.transfer import compression, link
from hostagent.transfer.base import (
    Child,
    ReceiveContext,
    SendContext,
    TransferMethod,
    WriterSink,
    fd_reader,
    fd_writer,
    file_size_limit,
    grow_pipe,
)
from orchapi.errors import BadRequest, InternalError, Unavailable

RSH = Path(__file__).with_name("rsh.py")

#: single-letter options the server may get: -a's parts, -H -A -X -S -W -c -x -I -u -v -q -n -z -E -O
SAFE_SHORT = frozenset("rlptgoDHAXSWcxIuvqnzEO")
#: long options the server may get
SAFE_LONG = frozenset(
    {
        "--delete",
        "--delete-before",
        "--delete-during",
        "--delete-delay",
        "--delete-after",
        "--numeric-ids",
        "--inplace",
        "--partial",
        "--sparse",
        "--whole-file",
        "--no-whole-file",
        "--hard-links",
        "--xattrs",
        "--acls",
        "--one-file-system",
        "--ignore-times",
        "--checksum",
        "--specials",
    }
)
_CHOICE = re.compile(r"^--(checksum|compress)-choice=[a-z0-9]+(,[a-z0-9]+)?\Z")
#: a cluster of single-letter options, optionally ending in rsync's ``e.<capabilities>`` marker
_CLUSTER = re.compile(r"^-([A-Za-z]+?)(e\.[A-Za-z]*)?\Z")
_WHY = {
    "--sender": "it would make this agent send its own files",
    "-K": "keep-dirlinks would follow symlinks in the destination",
    "--keep-dirlinks": "it would follow symlinks in the destination",
}


def client_options(features: frozenset[str], checksum: bool = False, sparse: bool = True) -> list[str]:
    """The rsync client's options: archive, hard links, numeric ids, delete, holes kept where the volume
    has sparse files (``-S`` makes the receiver scan every block for zeros: ~0.3 CPU-s per GiB), xattrs/
    ACLs if both filesystems keep them, ``--checksum`` on a repair pass; device nodes only where the
    target accepts them (``devices``: a privileged container). ``--partial``: a file cut short by an
    interruption stays in the (private, suspended) staging volume, and the resumed transfer sends only
    its difference against it (hostagent/migration/target/resume.py)."""
    options = ["-aHS" if sparse else "-aH", "--numeric-ids", "--delete", "--partial"]
    if "devices" not in features:
        options.append("--no-devices")
    if "xattrs" in features:
        options.append("-X")
    if "acls" in features:
        options.append("-A")
    if checksum:
        options.append("--checksum")
    return options


def validate_server_argv(argv: Any, dest: Path, devices: bool = True) -> list[str]:
    """The command line to run for the peer's request, with our own destination; BadRequest if unsafe.

    ``argv`` is what the peer's rsync passed to its remote shell: ``[host, "rsync", "--server", options...,
    ".", path]``. The host and the path are ignored: the destination is always ``dest``. Without
    ``devices`` (an unprivileged container), a request to receive device nodes (``-D``, ``--devices``)
    is refused: the server never creates one.
    """

    def refuse(why: str) -> BadRequest:
        return BadRequest(f"refusing the rsync server command the source asked for: {why}")

    if (
        not isinstance(argv, list)
        or not 5 <= len(argv) <= 40
        or not all(isinstance(a, str) and a and "\x00" not in a and len(a) <= 256 for a in argv)
    ):
        raise refuse("it must be a short list of non-empty strings")
    if argv[0].startswith("-"):
        raise refuse(f"unexpected remote shell option {argv[0]!r}")
    if argv[1] != "rsync" or argv[2] != "--server":
        raise refuse("it must be 'rsync --server ...'")
    *options, dot, _path = argv[3:]
    if dot != ".":
        raise refuse("it must end with '. <path>' (exactly one destination, no source paths)")
    for option in options:
        if option in _WHY:
            raise refuse(f"{option}: {_WHY[option]}")
        match = _CLUSTER.fullmatch(option)
        if match:
            bad = sorted(set(match.group(1)) - SAFE_SHORT)
            if bad:
                raise refuse(f"option -{''.join(bad)} in {option!r} is not allowed")
            if not devices and "D" in match.group(1):
                raise refuse(f"{option!r} asks for device nodes (-D), and the container is unprivileged")
            continue
        if not devices and option == "--devices":
            raise refuse("--devices asks to create device nodes, and the container is unprivileged")
        if option in SAFE_LONG or _CHOICE.match(option):
            continue
        if not option.startswith("-"):
            raise refuse(f"{option!r}: only option arguments may precede '.' (no paths)")
        raise refuse(f"option {option!r} is not allowed")
    return ["rsync", "--server", *options, ".", str(dest)]


async def _receive_fds(sock: socket.socket, child: Child) -> tuple[list[str], list[int]]:
    """Wait for the rsh helper to hand over its pipes (or for rsync to fail before it starts it)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    got: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

    def readable() -> None:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 2)
        except BlockingIOError:
            return
        except OSError as exc:
            if not got.done():
                got.set_exception(exc)
            return
        if not got.done():
            got.set_result((msg, fds))
        else:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    loop.add_reader(sock.fileno(), readable)
    try:
        exited = asyncio.ensure_future(child.proc.wait())
        done, _ = await asyncio.wait({got, exited}, return_when=asyncio.FIRST_COMPLETED)
        if got not in done:
            # rsync may have exited right after handing over; look once more
            readable()
        if not got.done():
            code = await child.wait()
            raise InternalError(f"rsync (source) failed before connecting: {child.last_error_line() or code}")
        exited.cancel()
        msg, fds = got.result()
    finally:
        loop.remove_reader(sock.fileno())
    if not msg or len(fds) != 2:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = await child.wait()
        raise InternalError(f"rsync (source) failed before connecting: {child.last_error_line() or code}")
    try:
        argv = json.loads(msg)
    except ValueError:
        argv = None
    if not isinstance(argv, list):
        raise InternalError("rsync (source): the remote shell helper sent no command line")
    return argv, fds


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 20):
        pass


class RsyncMethod(TransferMethod):
    name = "rsync"
    rank = 20  # only the difference to the pre-filled copy travels
    tool = "rsync"
    prefill = True

    async def send(self, ctx: SendContext) -> None:
        ch = ctx.channel
        parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child: Child | None = None
        writer: asyncio.StreamWriter | None = None
        moving: asyncio.Future[Any] | None = None
        fds: list[int] = []
        try:
            rsh = f"{sys.executable} -I -S {RSH} {child_end.fileno()}"
            argv = [
                "rsync",
                *client_options(ctx.features, checksum=ctx.checksum, sparse=ctx.sparse),
                *compression.rsync_options(ctx.compression),
                "-e",
                rsh,
                f"{ctx.path}/",
                "peer:volume",
            ]
            child = await Child.spawn(argv, "rsync (source)", pass_fds=[child_end.fileno()])
            child_end.close()
            server_argv, fds = await _receive_fds(parent, child)
            for fd in fds:
                grow_pipe(fd)  # fewer, larger reads and writes of the client's pipes
            # the server may answer as soon as it is ready: over the websocket, that must find the
            # client's input already plugged in (a copy of its fd, dropped if the link is taken)
            writer = await fd_writer(os.dup(fds[1]))
            ch.set_sink(WriterSink(writer))
            sock = await link.offer(ch, ctx.link, "rsync", argv=server_argv)
            if sock is not None:
                ch.set_sink(None)
                writer.close()
                writer = None
                # the client's pipes go straight to the data link; its part ends once all of the
                # server's output reached the client (which then waits for the server's status)
                relay = Relay(sock, fds[0], fds[1], what="rsync (source)", until=PEER)
                fds = [fds[0]]  # the relay closes the client's input; its output is closed below
                moving = asyncio.ensure_future(link.relay(relay, ch))
            else:
                link.close(fds[1])
                reader = await fd_reader(fds[0])  # what the rsync client writes
                fds = []
                moving = asyncio.ensure_future(pump(reader.read, ch))
            done = await ch.recv("exit")
            code = require(done, "code", int)
            if sock is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(moving), 30)
                # whatever the client still writes goes nowhere (the server is gone), but must be read,
                # or a full pipe would keep the client from ever exiting
                moving = asyncio.ensure_future(_drain(await fd_reader(fds.pop())))
            # the helper exits with the server's status, then the client finishes
            with contextlib.suppress(OSError):
                parent.setblocking(True)
                parent.send(bytes([code if 0 <= code <= 255 else 255]))
            rc = await child.wait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(moving, 30)
            if code != 0:
                raise InternalError(
                    f"rsync on the target failed: {done.get('message') or f'exit status {code}'}"
                )
            if rc != 0:
                raise InternalError(
                    f"rsync (source) failed: {child.last_error_line() or f'exit status {rc}'}"
                )
        finally:
            ch.set_sink(None)
            await link.settle(moving)
            if child is not None:
                await child.kill()
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            link.close(*fds)
            parent.close()
            child_end.close()

    async def receive(self, ctx: ReceiveContext) -> Path:
        ch = ctx.channel
        msg = await ch.recv("rsync")
        argv = validate_server_argv(msg.get("argv"), ctx.dest, devices=ctx.idmap is None)
        sock = await link.accept(msg, ctx.link, ctx.what)
        ends: list[int] = []
        if sock is not None:
            stdin_r, stdin_w = link.pipe()
            stdout_r, stdout_w = link.pipe()
            ends = [stdin_r, stdin_w, stdout_r, stdout_w]
            stdio: dict[str, Any] = {"stdin": stdin_r, "stdout": stdout_w}
        else:
            stdio = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE}
        try:
            child = await Child.spawn(
                file_size_limit(ctx.allowance) + argv, "rsync (target)", cwd=ctx.dest, **stdio
            )
        except BaseException:
            link.close(*ends)
            raise
        moving: asyncio.Future[Any] | None = None
        try:
            if sock is not None:
                link.close(ends[0], ends[3])  # the child's ends
                # the server's output ends the conversation: its status then goes over the websocket
                relay = Relay(sock, ends[2], ends[1], limit=ctx.allowance, what=ctx.what, until=LOCAL)
                ends = [ends[2]]  # the relay closes the server's input; its output is closed below
                await ch.send("ready", link=True)
                moving = asyncio.ensure_future(link.relay(relay, ch))
            else:
                assert child.proc.stdin is not None and child.proc.stdout is not None
                ch.set_sink(WriterSink(child.proc.stdin))
                await ch.send("ready", link=False)
                moving = asyncio.ensure_future(pump(child.proc.stdout.read, ch))
            try:
                # together: if the connection fails, the relay stops and rsync would block on a full pipe
                _, code = await asyncio.gather(moving, child.wait())
            except Exception:
                if ch.ws.closed:
                    raise Unavailable("the connection to the source agent closed unexpectedly") from None
                raise
            ch.set_sink(None)
            if ch.ws.closed:
                raise Unavailable("the connection to the source agent closed unexpectedly")
            await ch.send("exit", code=code, message=child.last_error_line() if code else "")
            if code != 0:
                if "file too large" in child.stderr().lower():
                    raise BadRequest(
                        f"the source sent more than it declared for {ctx.what} (a file outgrew the "
                        "volume's declared size); the transfer was stopped"
                    )
                raise child.failure(code, ctx.what)
            return ctx.dest
        finally:
            ch.set_sink(None)
            await link.settle(moving)
            await child.kill()
            link.close(*ends)
