"""A streaming exec on an LXD host: LXD's own exec websockets, relayed.

LXD speaks the same protocol the agent offers (orchapi/execapi.py is shaped after it), so the relay is
frame for frame: the agent asks LXD for an exec with ``wait-for-websocket``, connects to each of LXD's
websockets over LXD's unix socket, and passes data, resizes and signals through. LXD starts the command
once they are all connected, which happens only after the client has connected all of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from hostagent.execsession.base import ExecProcess, ExecSpec
from hostagent.lxd import websocket
from hostagent.lxd.client import LxdClient, path_of
from orchapi.errors import InternalError
from orchapi.execapi import CONTROL, STDIN, Resize, Signal, fds_for

#: LXD takes whole seconds to wait on an operation; a shell may stay open for days
FOREVER = float(2**31)
#: how long a terminal's output may still arrive after LXD reported the command's end
DRAIN_AFTER_END = 0.5


class LxdExec(ExecProcess):
    """One LXD exec operation and the agent's connections to its websockets."""

    def __init__(self, client: LxdClient, name: str, spec: ExecSpec) -> None:
        self.client, self.name, self.spec = client, name, spec
        self._doc: dict[str, Any] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self._status: asyncio.Future[dict[str, Any]] | None = None

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": self.spec.command,
            "environment": self.spec.environment,
            "cwd": self.spec.cwd or "/",
            "interactive": self.spec.interactive,
            "wait-for-websocket": True,
            "record-output": False,
        }
        if self.spec.interactive:
            body.update(width=self.spec.width or 80, height=self.spec.height or 24)
        if self.spec.user is not None:
            body["user"] = self.spec.user
        if self.spec.group is not None:
            body["group"] = self.spec.group
        return body

    def _path(self) -> str:
        return path_of("instances", self.name, "exec")

    async def start(self) -> None:
        self._doc = await asyncio.to_thread(self.client.request, "POST", self._path(), json=self._body())
        fds = ((self._doc.get("metadata") or {}).get("metadata") or {}).get("fds") or {}
        op_path = str(self._doc.get("operation") or "")
        if not op_path or any(fd not in fds for fd in fds_for(self.spec.interactive)):
            raise InternalError("LXD's exec answered without the websockets it should offer")
        self._http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.client.socket_path))
        # control first and stdin last, as the lxc client does: LXD starts the command once the data
        # websockets are connected, and a quick command's output must find its websockets there
        order = sorted(fds_for(self.spec.interactive), key=lambda fd: (fd != CONTROL, fd == STDIN))
        for fd in order:
            url = f"http://lxd{op_path}/websocket?secret={fds[fd]}"
            self._ws[fd] = await websocket.connect(self._http, url)
        self._status = asyncio.ensure_future(asyncio.to_thread(self.client.wait, self._doc, FOREVER))

    async def read(self, stream: str) -> bytes:
        """Pipes end with LXD's end-of-stream frame, always sent before the operation ends. LXD may
        keep a terminal's websocket open after the command ended (the lxc client stops at the
        operation's end): once the operation is over, what is still coming gets a moment."""
        assert self._status is not None
        if not self.spec.interactive:
            return await self._receive(self._ws[stream])
        receiving = asyncio.ensure_future(self._receive(self._ws[stream]))
        if not self._status.done():
            await asyncio.wait({receiving, self._status}, return_when=asyncio.FIRST_COMPLETED)
        if receiving.done():
            return receiving.result()
        try:
            return await asyncio.wait_for(receiving, DRAIN_AFTER_END)
        except TimeoutError:
            return b""

    @staticmethod
    async def _receive(ws: aiohttp.ClientWebSocketResponse) -> bytes:
        """The next chunk; at the stream's end (LXD sends an empty text or binary frame, or closes)
        ``b""``, and our side closed, which LXD waits for before it ends the operation."""
        while True:
            msg = await websocket.receive(ws)
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                return msg.data
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data:
                continue  # no text is sent on data streams; ignored as the lxc client does
            await ws.close()
            return b""

    async def write(self, data: bytes) -> None:
        ws = self._ws[STDIN]
        if ws.closed:
            raise ConnectionError("LXD closed the command's input")
        await ws.send_bytes(data)

    async def close_stdin(self) -> None:
        if not self.spec.interactive:
            await self._ws[STDIN].close()

    async def resize(self, width: int, height: int) -> None:
        if width and height:
            await self._ws[CONTROL].send_str(Resize(width, height).to_json())

    async def signal(self, number: int) -> None:
        await self._ws[CONTROL].send_str(Signal(number).to_json())

    async def wait(self) -> int:
        assert self._status is not None
        result = await asyncio.shield(self._status)
        return int(result.get("return", -1))

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await self.signal(9)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._status), 5)  # type: ignore[arg-type]

    async def close(self) -> None:
        for ws in self._ws.values():
            with contextlib.suppress(Exception):
                await ws.close()
        if self._http is not None:
            await self._http.close()


class LxdConsole(LxdExec):
    """LXD's console of a container (``lxc console``): the same websockets as an interactive exec, "0"
    and "control"; the operation lasts until the client disconnects."""

    def __init__(self, client: LxdClient, name: str, width: int, height: int) -> None:
        super().__init__(client, name, ExecSpec(["console"], interactive=True, width=width, height=height))

    def _path(self) -> str:
        return path_of("instances", self.name, "console")

    def _body(self) -> dict[str, Any]:
        return {"type": "console", "width": self.spec.width or 80, "height": self.spec.height or 24}

    async def wait(self) -> int:
        while not self._ws[STDIN].closed:  # a console has no exit status: it ends when it is left
            await asyncio.sleep(0.2)
        return 0

    async def kill(self) -> None:
        await self.close()
