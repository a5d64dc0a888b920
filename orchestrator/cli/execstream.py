"""The client side of a streaming exec: the local stdin, stdout, stderr (or terminal) relayed over the
exec's websockets (protocol: orchapi/execapi.py).

Memory stays flat whatever travels: one chunk per stream is in flight, and a stream is read only as fast
as the other end takes it (websocket sends wait for the socket to drain; local writes are done before
the next chunk is read). Signals the client gets (Ctrl-C when not on a terminal, a ``kill``, the
terminal hanging up) are forwarded to the command, so ending the client ends the command; a client that
dies outright drops the connection, and the agent kills the command then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from typing import Any

import aiohttp

from orchapi.errors import Unavailable
from orchapi.execapi import CONTROL, STDIN, Resize, Signal, fds_for
from orchapi.wsclient import session_for
from orchestrator.cli import terminal

CHUNK = 1 << 16
#: what the client forwards rather than dying of (on a terminal, Ctrl-C is a byte, not SIGINT)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LocalInput:
    """Chunks of the local stdin without blocking the event loop: a reader callback for pipes, sockets
    and terminals, a thread for regular files (which epoll cannot watch, and which never block)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        mode = os.fstat(fd).st_mode
        self.regular = stat.S_ISREG(mode) or stat.S_ISBLK(mode)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self.regular:
            return await loop.run_in_executor(None, os.read, self.fd, CHUNK)
        ready = loop.create_future()
        loop.add_reader(self.fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)
        try:
            return os.read(self.fd, CHUNK)
        except BlockingIOError:
            return await self.read()
        except OSError:
            return b""


async def relay(
    client: Any, operation: dict[str, Any], interactive: bool, forward_stdin: bool, detach: bool = False
) -> int:
    """Connect the exec's websockets, relay until the command's output has ended (or, ``detach``, the
    console is left with Ctrl+a q); the exit status."""
    op_path = str(operation["operation"])
    fds = (operation.get("metadata") or {}).get("metadata", {}).get("fds") or {}
    session, base = session_for(client)
    async with session:
        sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        try:
            for fd in fds_for(interactive):
                sockets[fd] = await session.ws_connect(
                    f"{base}{op_path}/websocket?secret={fds[fd]}", max_msg_size=1 << 20, heartbeat=30
                )
        except (aiohttp.ClientError, KeyError, OSError) as exc:
            raise Unavailable(f"could not open the exec's streams on {client.url}: {exc}") from None
        with _forwarding(sockets[CONTROL], interactive):
            if interactive:
                with terminal.raw(0):
                    await _interactive(sockets, detach)
            else:
                await _pipes(sockets, forward_stdin)
        for ws in sockets.values():
            await ws.close()
    result = await asyncio.to_thread(client.wait, op_path)
    return int(result.get("return", 1))


@contextlib.contextmanager
def _forwarding(control: aiohttp.ClientWebSocketResponse, interactive: bool):  # type: ignore[no-untyped-def]
    """Signals to the command while the exec runs; window size changes too, on a terminal."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def send(text: str) -> None:
        task = loop.create_task(control.send_str(text))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    installed = []
    for sig in FORWARDED:
        loop.add_signal_handler(sig, send, Signal(int(sig)).to_json())
        installed.append(sig)
    if interactive:
        loop.add_signal_handler(signal.SIGWINCH, lambda: send(Resize(*terminal.size(0)).to_json()))
        installed.append(signal.SIGWINCH)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _drain(ws: aiohttp.ClientWebSocketResponse, fd: int) -> None:
    """Everything the command writes to one stream, to the local ``fd``, until the stream ends."""
    loop = asyncio.get_running_loop()
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY:
            continue
        if not msg.data:
            break
        try:
            await loop.run_in_executor(None, _write_all, fd, msg.data)
        except BrokenPipeError:
            return  # nobody reads our output any more: like a local command, stop writing it


#: the console's detach keys, as lxc's: Ctrl+a then q
DETACH = b"\x01q"


async def _feed(ws: aiohttp.ClientWebSocketResponse, end_with_close: bool, detach: bool = False) -> bool:
    """Local input to ``ws`` until it ends; True if it ended with the detach keys."""
    source = LocalInput(0)
    held = b""  # a Ctrl+a at the end of a chunk, until the next one says whether q follows
    while data := await source.read():
        if detach:
            data, held = held + data, b""
            if DETACH in data:
                before = data[: data.index(DETACH)]
                if before:
                    await ws.send_bytes(before)
                return True
            if data.endswith(DETACH[:1]):
                data, held = data[:-1], DETACH[:1]
        if data:
            await ws.send_bytes(data)
    if end_with_close:
        await ws.close()
    return False


async def _pipes(sockets: dict[str, aiohttp.ClientWebSocketResponse], forward_stdin: bool) -> None:
    feeding = asyncio.ensure_future(_feed(sockets[STDIN], True) if forward_stdin else sockets[STDIN].close())
    try:
        await asyncio.gather(_drain(sockets["1"], 1), _drain(sockets["2"], 2))
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeding


async def _interactive(sockets: dict[str, aiohttp.ClientWebSocketResponse], detach: bool) -> None:
    await sockets[CONTROL].send_str(Resize(*terminal.size(0)).to_json())
    typing = asyncio.ensure_future(_feed(sockets[STDIN], False, detach))
    output = asyncio.ensure_future(_drain(sockets[STDIN], 1))
    try:
        await asyncio.wait({typing, output}, return_when=asyncio.FIRST_COMPLETED)
        if typing.done() and not typing.cancelled() and typing.exception() is None and typing.result():
            output.cancel()  # detached: the other side ends when our websockets close
        else:
            await output
    finally:
        typing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await typing
