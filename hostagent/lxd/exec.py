"""Run a command in an LXD container and collect its output (non-interactive, like the native runtime).

Without input, LXD records stdout and stderr to log files (``record-output``) that are read and then
deleted. With input, LXD's websocket mode is used: one websocket per stream plus a control one; stdin is
written and closed, stdout and stderr are read until LXD closes them, and the operation gives the exit
code. The websockets are reached over the same unix socket with aiohttp, in a private event loop (driver
calls run in worker threads).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from hostagent.lxd.client import LxdClient, path_of
from hostagent.runtimes.base import ExecResult
from orchapi.errors import Unavailable

#: the most output kept per stream (what the native runtime keeps too)
MAX_OUTPUT = 64 * 1024 * 1024


def run(
    client: LxdClient,
    name: str,
    command: list[str],
    env: dict[str, str],
    cwd: str,
    stdin: bytes | None,
    timeout: float | None,
) -> ExecResult:
    body: dict[str, Any] = {
        "command": command,
        "environment": env,
        "interactive": False,
        "wait-for-websocket": stdin is not None,
        "record-output": stdin is None,
    }
    if cwd:
        body["cwd"] = cwd
    doc = client.request("POST", path_of("instances", name, "exec"), json=body)
    if stdin is None:
        return _recorded(client, doc, timeout)
    return asyncio.run(_websockets(client, doc, stdin, timeout))


def _recorded(client: LxdClient, doc: dict[str, Any], timeout: float | None) -> ExecResult:
    result = client.wait(doc, timeout)
    outputs = result.get("output") or {}
    streams: dict[str, bytes] = {}
    for fd in ("1", "2"):
        url = outputs.get(fd)
        if not url:
            streams[fd] = b""
            continue
        response = client.raw("GET", url)
        streams[fd] = response.content[:MAX_OUTPUT] if response.status_code == 200 else b""
        with contextlib.suppress(Exception):
            client.raw("DELETE", url)
    return ExecResult(int(result.get("return", -1)), streams["1"], streams["2"])


async def _websockets(
    client: LxdClient, doc: dict[str, Any], stdin: bytes, timeout: float | None
) -> ExecResult:
    op = doc["metadata"]
    op_path = doc["operation"]
    fds = op["metadata"]["fds"]
    connector = aiohttp.UnixConnector(path=client.socket_path)
    async with aiohttp.ClientSession(connector=connector) as session:

        def url(secret: str) -> str:
            return f"http://lxd{op_path}/websocket?secret={secret}"

        control = await session.ws_connect(url(fds["control"]))
        ws_in = await session.ws_connect(url(fds["0"]))
        ws_out = await session.ws_connect(url(fds["1"]))
        ws_err = await session.ws_connect(url(fds["2"]))

        async def feed() -> None:
            for start in range(0, len(stdin), 1 << 16):
                await ws_in.send_bytes(stdin[start : start + (1 << 16)])
            await ws_in.close()

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> bytes:
            out = bytearray()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    if not msg.data:  # LXD's end-of-stream marker
                        break
                    if len(out) < MAX_OUTPUT:
                        out += msg.data
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
            await ws.close()
            return bytes(out)

        try:
            _, out, err = await asyncio.wait_for(
                asyncio.gather(feed(), drain(ws_out), drain(ws_err)), timeout
            )
        except TimeoutError:
            raise Unavailable(f"the command did not finish within {timeout:g} s") from None
        finally:
            await control.close()
    result = await asyncio.get_running_loop().run_in_executor(None, client.wait, doc, 60.0)
    return ExecResult(int(result.get("return", -1)), out, err)
