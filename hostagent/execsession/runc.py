"""A streaming exec with runc: three pipes, or a terminal.

Interactive: ``runc exec --tty`` creates a pty inside the container for the command (its controlling
terminal: the container's line discipline turns the Ctrl-C and Ctrl-Z bytes the client sends into
SIGINT/SIGTSTP for the foreground job) and copies between it and runc's own stdio, which is a pty pair
of the agent's: the agent relays its master. A resize is set on that master and runc, sent SIGWINCH,
copies the size into the container (TIOCSWINSZ there sends the command SIGWINCH). runc 1.1 takes a
``--console-socket`` only together with ``--detach``, which would lose the exit status, hence the pair.
Otherwise runc passes its own stdin/stdout/stderr (our pipes) to the command.

runc stays in the foreground until the command exits and then exits with its status (128 + N when
signal N ended it). Signals go straight to the command by the host pid runc writes to its pid file; a
client that vanishes has the command's whole process tree killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import signal
import struct
import termios
from pathlib import Path

from hostagent.execsession import fdio
from hostagent.execsession.base import ExecProcess, ExecSpec
from hostagent.runtimes.runc import Runc, descendants
from hostagent.runtimes.runc_exec import EXEC_NOT_EXECUTABLE_CODE, EXEC_NOT_FOUND_CODE
from hostagent.runtimes.runc_exec import log_error as runc_log_error

#: after the command exited, how long a silence ends its output (a background job may hold the pipe)
DRAIN_AFTER_EXIT = 1.0


def argv(runc: Runc, cid: str, spec: ExecSpec, pid_file: Path, log_file: Path) -> list[str]:
    """runc's command line: every value its own argument (never a shell string)."""
    out = [runc.binary, "--root", str(runc.root), "--log", str(log_file), "--log-format", "json", "exec"]
    out += ["--pid-file", str(pid_file), "--cwd", spec.cwd or "/"]
    if spec.interactive:
        out += ["--tty"]
    if spec.user is not None or spec.group is not None:
        out += ["--user", f"{spec.user or 0}:{spec.group or 0}"]
    for key, value in spec.environment.items():
        out += ["--env", f"{key}={value}"]
    # flags end at the first positional argument (runc sets SkipArgReorder): the command keeps its options
    return out + [cid, *spec.command]


def set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class RuncExec(ExecProcess):
    """One ``runc exec`` and its streams."""

    def __init__(self, runc: Runc, cid: str, spec: ExecSpec) -> None:
        self.runc, self.cid, self.spec = runc, cid, spec
        base = runc.run_dir / f"exec-{secrets.token_hex(8)}"
        self.pid_file, self.log_file = Path(f"{base}.pid"), Path(f"{base}.log")
        self.proc: asyncio.subprocess.Process | None = None
        self.master: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._stdin_closed = False

    async def start(self) -> None:
        os.close(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        pipe = asyncio.subprocess.PIPE
        slave = None
        if self.spec.interactive:
            self.master, slave = os.openpty()
            os.set_blocking(self.master, False)
            if self.spec.width and self.spec.height:
                set_size(self.master, self.spec.width, self.spec.height)  # runc copies it at start
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv(self.runc, self.cid, self.spec, self.pid_file, self.log_file),
                stdin=slave if slave is not None else pipe,
                stdout=slave if slave is not None else pipe,
                stderr=slave if slave is not None else pipe,
                start_new_session=True,  # a signal to the agent's group is not the command's
            )
        except BaseException:
            await self.close()
            raise
        finally:
            if slave is not None:
                os.close(slave)  # runc has it; the master reads EIO once runc and the command are done
        self._exited = asyncio.ensure_future(self._watch())

    async def _watch(self) -> int:
        assert self.proc is not None
        status = await self.proc.wait()
        return status

    # -- streams -----------------------------------------------------------------------------------
    async def read(self, stream: str) -> bytes:
        if self.master is not None:
            return await self._after_exit(fdio.read(self.master))
        assert self.proc is not None and self.proc.stdout and self.proc.stderr
        reader = self.proc.stdout if stream == "1" else self.proc.stderr
        return await self._after_exit(reader.read(fdio.CHUNK))

    async def _after_exit(self, reading) -> bytes:  # type: ignore[no-untyped-def]
        """``reading``'s result, or ``b""`` once the command has exited and nothing more came for
        :data:`DRAIN_AFTER_EXIT`: what the command wrote is in the pipe already (read as fast as the
        client takes it, however long that is), so only a background job could hold the pipe open."""
        assert self._exited is not None
        task = asyncio.ensure_future(reading)
        if not self._exited.done():
            await asyncio.wait({task, self._exited}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        try:
            return await asyncio.wait_for(task, DRAIN_AFTER_EXIT)
        except TimeoutError:
            return b""

    async def write(self, data: bytes) -> None:
        if self.master is not None:
            await fdio.write(self.master, data)
            return
        assert self.proc is not None and self.proc.stdin
        if self._stdin_closed:
            return
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.master is None and self.proc is not None and self.proc.stdin and not self._stdin_closed:
            self._stdin_closed = True
            self.proc.stdin.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await self.proc.stdin.wait_closed()

    async def resize(self, width: int, height: int) -> None:
        if self.master is not None and width and height:
            set_size(self.master, width, height)
            if self.proc is not None and self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGWINCH)  # runc copies the new size into the container

    def _pid(self) -> int:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    async def signal(self, number: int) -> None:
        pid = self._pid()
        with contextlib.suppress(ProcessLookupError):
            if pid:
                os.kill(pid, number)
            elif self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(number)  # runc forwards what it gets until the pid file exists

    async def wait(self) -> int:
        assert self._exited is not None
        status = await asyncio.shield(self._exited)
        if status == 255:
            reason = runc_log_error(self.log_file)
            if reason is not None:
                lower = reason.lower()
                if "executable file not found" in lower or (" exec: " in lower and "no such file" in lower):
                    return EXEC_NOT_FOUND_CODE
                if " exec: " in lower and "permission denied" in lower:
                    return EXEC_NOT_EXECUTABLE_CODE
        return status

    async def kill(self) -> None:
        pid = self._pid()
        for _ in range(20):  # runc writes the pid file as it starts the command: give it a moment
            if pid or self.proc is None or self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
            pid = self._pid()
        for p in descendants(pid) if pid else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), 3)  # type: ignore[arg-type]
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()

    async def close(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for path in (self.pid_file, self.log_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
