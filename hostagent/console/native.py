"""The agent's side of native consoles: starting a container's keeper, attaching to it, its log.

A container's ``console.json`` (in its private directory) records where its keeper listens, so an agent
started later finds the console of a container an earlier agent started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hostagent.console.keeper import frame
from hostagent.console.ringlog import read_log
from hostagent.execsession.base import ExecProcess
from hostagent.jsonfile import write_json
from orchapi.errors import Conflict, InternalError

RECORD = "console.json"
LOG = "console.log"
#: how long the keeper may take to be ready for runc
READY_TIMEOUT = 15.0


@dataclass
class Keeper:
    dir: Path
    pid: int

    @property
    def runc_socket(self) -> Path:
        return self.dir / "runc"

    @property
    def attach_socket(self) -> Path:
        return self.dir / "attach"

    def stop(self) -> None:
        """For a start that failed: the keeper and its directory go."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_keeper(container_dir: Path) -> Keeper:
    """A keeper ready to receive the terminal of the container about to start in ``container_dir``.

    Its sockets go in a fresh 0700 directory in /tmp: a unix socket's path has at most 107 bytes, more
    than a data dir may leave, and mkdtemp's directory is one nobody else can enter or pre-create.
    """
    sockets = Path(tempfile.mkdtemp(prefix="orch-console-"))
    for old in (container_dir / LOG, container_dir / (LOG + ".1")):
        old.unlink(missing_ok=True)  # one boot per log
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostagent.console.keeper"]
        + ["--dir", str(sockets), "--log", str(container_dir / LOG)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not the agent's session: it outlives the agent
        close_fds=True,
    )
    keeper = Keeper(sockets, proc.pid)
    threading.Thread(target=proc.wait, name=f"reap-keeper-{proc.pid}", daemon=True).start()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() != b"ready":
        keeper.stop()
        raise InternalError("the console keeper did not start")
    write_json(container_dir / RECORD, {"dir": str(sockets), "pid": proc.pid})
    return keeper


def attach_socket(container_dir: Path) -> Path:
    try:
        record = json.loads((container_dir / RECORD).read_text())
        return Path(record["dir"]) / "attach"
    except (OSError, ValueError, KeyError, TypeError):
        raise Conflict("this container has no console (it was started before consoles existed)",
                       "restart it to get one") from None  # fmt: skip


def console_log(container_dir: Path) -> bytes:
    return read_log(container_dir / LOG)


class KeeperAttachment(ExecProcess):
    """An agent's connection to a keeper, as the exec session's terminal ("detach" ends it, never the
    container)."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path, self.width, self.height = path, width, height
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ended = asyncio.Event()

    async def start(self) -> None:
        for _ in range(50):  # the keeper binds its attach socket once runc handed over the terminal
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.1)
        else:
            raise Conflict("the container's console is gone (has it stopped?)")
        await self.resize(self.width, self.height)

    async def read(self, stream: str) -> bytes:
        assert self._reader is not None
        try:
            data = await self._reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self._ended.set()
        return data

    async def _send(self, kind: bytes, payload: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("the console is detached")
        self._writer.write(frame(kind, payload))
        await self._writer.drain()

    async def write(self, data: bytes) -> None:
        await self._send(b"d", data)

    async def close_stdin(self) -> None:
        return None

    async def resize(self, width: int, height: int) -> None:
        if width and height:
            await self._send(b"r", f"{width} {height}".encode())

    async def signal(self, number: int) -> None:
        return None  # a console has no command to signal

    async def wait(self) -> int:
        await self._ended.wait()
        return 0

    async def kill(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        self._ended.set()
