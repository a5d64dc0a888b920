"""Run a command in an LXD container and collect its output (non-interactive, like the native runtime).

Without input, LXD records stdout and stderr to log files (``record-output``) that are read and then
deleted. With input, it is the streaming exec's :class:`LxdExec` (one websocket per stream plus a
control one, over LXD's unix socket) in a private event loop (driver calls run in worker threads):
stdin is written and closed, stdout and stderr are read to their ends, and the operation gives the exit
code.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hostagent.execsession.base import ExecSpec
from hostagent.execsession.lxd import LxdExec
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
    if stdin is not None:
        spec = ExecSpec(command, env, cwd or "/")
        return asyncio.run(_websockets(client, name, spec, stdin, timeout))
    body: dict[str, Any] = {
        "command": command,
        "environment": env,
        "interactive": False,
        "wait-for-websocket": False,
        "record-output": True,
    }
    if cwd:
        body["cwd"] = cwd
    doc = client.request("POST", path_of("instances", name, "exec"), json=body)
    return _recorded(client, doc, timeout)


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
    client: LxdClient,
    name: str,
    spec: ExecSpec,
    stdin: bytes,
    timeout: float | None,
) -> ExecResult:
    process = LxdExec(client, name, spec)
    await process.start()
    try:

        async def feed() -> None:
            for start in range(0, len(stdin), 1 << 16):
                await process.write(stdin[start : start + (1 << 16)])
            await process.close_stdin()

        async def collect(stream: str) -> bytes:
            out = bytearray()
            while chunk := await process.read(stream):
                if len(out) < MAX_OUTPUT:
                    out += chunk
            return bytes(out)

        async def everything() -> tuple[bytes, bytes, int]:
            _, out, err = await asyncio.gather(feed(), collect("1"), collect("2"))
            return out, err, await process.wait()

        try:
            out, err, code = await asyncio.wait_for(everything(), timeout)
        except TimeoutError:
            await process.kill()
            raise Unavailable(f"the command did not finish within {timeout:g} s") from None
    finally:
        await process.close()
    return ExecResult(code, out, err)
