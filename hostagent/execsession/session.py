"""One streaming exec: its one-time websocket secrets, and the relay between websockets and the command.

The operation (``POST .../exec`` with ``wait-for-websocket``) creates a session and returns its secrets;
the command starts only once every websocket is connected (within :data:`CONNECT_TIMEOUT`), so no
output is produced before someone can read it. Secrets are 256-bit random, kept only as SHA-256 hashes,
compared in constant time, good for one connection each, and scoped to one stream of one operation.

A client that goes away (its control websocket closes, or a send to it fails) before the command ended
gets the command killed: nothing keeps running unseen. The end is reported only after every output
stream has been drained and closed, so a client that sees ``return`` has seen all the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from hostagent.execsession.base import ExecProcess
from orchapi.errors import BadRequest, Forbidden, Unavailable
from orchapi.execapi import CONTROL, STDIN, Resize, fds_for, parse_control

log = logging.getLogger(__name__)

#: how long the client may take to connect every websocket before the exec is given up
CONNECT_TIMEOUT = 30.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ExecSession:
    """The websockets of one exec operation and their relay."""

    def __init__(self, process: ExecProcess, interactive: bool) -> None:
        self.process = process
        self.interactive = interactive
        self.fds = fds_for(interactive)
        plain = {fd: secrets.token_urlsafe(32) for fd in self.fds}
        self._plain: dict[str, str] | None = plain
        self._hashes = {fd: _digest(s) for fd, s in plain.items()}
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._connected = asyncio.Event()
        self._finished = asyncio.Event()
        self._lost = asyncio.Event()

    def take_secrets(self) -> dict[str, str]:
        """The secrets, once (for the operation's creator); afterwards only their hashes remain."""
        plain, self._plain = self._plain or {}, None
        return plain

    def redeem(self, secret: str) -> str:
        """The stream ``secret`` opens; each secret works once. :class:`Forbidden` otherwise."""
        digest = _digest(secret)
        found = None
        for fd, expected in self._hashes.items():
            if hmac.compare_digest(digest, expected):  # every one compared: no timing on which
                found = fd
        if found is None or found in self._sockets or self._finished.is_set():
            raise Forbidden("this exec websocket secret is not valid (each works once)")
        return found

    async def attach(self, fd: str, ws: web.WebSocketResponse) -> None:
        """Serve one connected websocket until the exec has ended."""
        self._sockets[fd] = ws
        if len(self._sockets) == len(self.fds):
            self._connected.set()
        await self._finished.wait()

    async def run(self) -> dict[str, Any]:
        """The operation's work: wait for the client, run the command, relay, report the status."""
        try:
            try:
                await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
            except TimeoutError:
                raise Unavailable(
                    f"the client connected {len(self._sockets)} of the exec's {len(self.fds)} websockets "
                    f"within {CONNECT_TIMEOUT:.0f} s; the command was not started"
                ) from None
            await self.process.start()
            return {"return": await self._relay()}
        finally:
            await self.process.close()
            self._finished.set()
            for ws in self._sockets.values():
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _relay(self) -> int:
        outputs = (STDIN,) if self.interactive else ("1", "2")
        pumps = [asyncio.ensure_future(self._output(fd)) for fd in outputs]
        helpers = [asyncio.ensure_future(self._input()), asyncio.ensure_future(self._control())]
        status = asyncio.ensure_future(self.process.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({status, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not status.done():
                log.info("exec client went away; killing the command")
                await self.process.kill()
            code = await status
            await asyncio.gather(*pumps)
            return code
        finally:
            for task in [*pumps, *helpers, lost]:
                task.cancel()

    async def _output(self, fd: str) -> None:
        ws = self._sockets[fd]
        while chunk := await self.process.read(fd):
            try:
                await ws.send_bytes(chunk)
            except (ConnectionError, RuntimeError):  # aiohttp raises either for a closed websocket
                self._lost.set()
                return
        if not self.interactive:
            await ws.close()

    async def _input(self) -> None:
        ws = self._sockets[STDIN]
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            if not msg.data:
                break
            try:
                await self.process.write(msg.data)
            except (OSError, ConnectionError):
                return  # the command stopped reading for good; what is left is not wanted
        if self.interactive:
            self._lost.set()  # the terminal's one websocket closed: the client is gone
        else:
            with contextlib.suppress(OSError, ConnectionError):
                await self.process.close_stdin()

    async def _control(self) -> None:
        async for msg in self._sockets[CONTROL]:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                command = parse_control(msg.data)
            except BadRequest as exc:
                log.info("ignored exec control message: %s", exc)
                continue
            if isinstance(command, Resize):
                await self.process.resize(command.width, command.height)
            else:
                await self.process.signal(command.signal)
        self._lost.set()
