"""The transfer method interface, the choice of a method, and the plumbing every method shares.

A method moves one volume at a time between a local process on each side (or one on the source and one on
the target) whose stdin/stdout the agents relay over the migration websocket:

- the source calls :meth:`TransferMethod.send` with the local volume to send (and the previously sent one,
  for incremental methods);
- the target calls :meth:`TransferMethod.receive` with the place to receive into (for pre-filling methods
  already holding a copy of the closest volume it has, so only the difference travels).

Which methods an agent offers follows from its storage (``btrfs`` only between btrfs agents), from the
tools installed, and from ``ORCH_AGENT_TRANSFER_METHODS`` (comma-separated, read at agent start; e.g.
``tar`` forces the fallback). The target picks the first of the source's methods it also supports, in the
order btrfs > rsync > tar.

Every child runs in its own process group, so that cancelling a transfer kills it together with any
processes it forked (rsync's generator/receiver pair, the rsh helper).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import struct
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostagent.migration.protocol import CHUNK, Channel, pump
from hostagent.runtimes.idmap import IdMap
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, InternalError

METHODS_ENV = "ORCH_AGENT_TRANSFER_METHODS"
#: every method, best first; ``lxd-migration`` (LXD moving the data itself, see lxd_migration.py) last:
#: orch's own methods pre-fill from the image and verify every file, so they are the default
PREFERENCE = ("btrfs", "rsync", "tar", "lxd-migration")
#: the tool each streaming method needs on both agents
TOOLS = {"btrfs": "btrfs", "rsync": "rsync", "tar": "tar"}
#: how much of a child's stderr is kept for error messages
STDERR_TAIL = 8192
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1024 * 1024
NO_SPACE = "no space left on device"


def available_methods(storage_methods: Sequence[str], env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The methods this agent offers: its storage's, whose tools are installed, restricted by the env."""
    env = os.environ if env is None else env
    methods = [m for m in storage_methods if m in PREFERENCE and (m not in TOOLS or shutil.which(TOOLS[m]))]
    raw = env.get(METHODS_ENV, "").strip()
    if raw:
        wanted = [m.strip() for m in raw.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(PREFERENCE))
        if unknown:
            raise ValueError(f"{METHODS_ENV}: unknown transfer method(s) {', '.join(unknown)}")
        methods = [m for m in methods if m in wanted]
        if not methods:
            raise ValueError(
                f"{METHODS_ENV}={raw} leaves no transfer method this agent's storage supports "
                f"({', '.join(storage_methods)})"
            )
    return tuple(methods)


def negotiate(
    source: Sequence[str], target: Sequence[str], refresh: bool = False, wanted: str | None = None
) -> str:
    """The method both sides support, btrfs > rsync > tar > lxd-migration, or the ``wanted`` one (the
    user's ``--method``) if both support it; refreshes never use btrfs (see btrfs.py)."""
    if wanted:
        if wanted not in PREFERENCE:
            raise BadRequest(f"unknown transfer method {wanted!r}", "use one of " + ", ".join(PREFERENCE))
        if refresh and wanted == "btrfs":
            raise BadRequest("a refresh cannot use btrfs send", "use rsync")
        if wanted not in source or wanted not in target:
            raise Conflict(
                f"transfer method {wanted} is not available between these agents",
                f"source offers {', '.join(source) or 'none'}, target supports {', '.join(target) or 'none'}",
            )
        return wanted
    for method in PREFERENCE:
        if method in source and method in target and not (refresh and method == "btrfs"):
            return method
    raise Conflict(
        "the agents have no transfer method in common",
        f"source offers {', '.join(source) or 'none'}, target supports {', '.join(target) or 'none'}",
    )


_features: dict[str, frozenset[str]] = {}


def probe_features(data_dir: Path) -> frozenset[str]:
    """``xattrs`` and ``acls`` if the data dir's filesystem stores them (rsync -X / -A need both sides)."""
    key = str(data_dir)
    if key in _features:
        return _features[key]
    found = set()
    with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".probe-") as fh:
        for name in ("trusted.orch-probe", "user.orch-probe"):
            try:
                os.setxattr(fh.name, name, b"1")
                found.add("xattrs")
                break
            except OSError:
                continue
        # the minimal access ACL (user::rw- group::r-- other::r--), equivalent to mode 0644
        acl = struct.pack("<I", 2) + b"".join(
            struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 6), (4, 4), (0x20, 4))
        )
        try:
            os.setxattr(fh.name, "system.posix_acl_access", acl)
            found.add("acls")
        except OSError:
            pass
    _features[key] = frozenset(found)
    return _features[key]


# -------------------------------------------------------------------------------------------- interface


@dataclass
class SendContext:
    """What the source side of a method needs for one volume."""

    channel: Channel
    path: Path  # the local volume to send (read-only for the duration)
    parent: Path | None  # the volume sent just before, which the target has (incremental methods)
    features: frozenset[str]
    checksum: bool = False  # a repair pass: compare contents, not size and mtime (rsync)
    #: makes a data-link offer for this volume (hostagent/transfer/link.py); None: the websocket only
    link: Any = None


@dataclass
class ReceiveContext:
    """What the target side of a method needs for one volume."""

    channel: Channel
    dest: Path  # pre-filled/empty volume (rsync, tar), or an empty directory to receive into (btrfs)
    features: frozenset[str]
    idmap: IdMap | None  # the ids the source's volume uses (None: privileged, anything goes)
    what: str  # "snapshot s1", "rootfs": for messages
    #: the most bytes the volume may bring (its declared size plus a margin; None: unbounded)
    allowance: int | None = None
    #: the container's tree inside the volume when the volume holds more (an LXD volume: "rootfs",
    #: beside metadata files the host's root owns); None: the volume is the tree
    tree: str | None = None
    #: dials the source's data-link offer (hostagent/transfer/link.py); None: the websocket only
    link: Any = None


class TransferMethod(ABC):
    name: str = ""
    #: whether the target should pre-fill each volume with the closest content it has
    prefill: bool = False

    @abstractmethod
    async def send(self, ctx: SendContext) -> None:
        """Source side: stream ``ctx.path``; returns when the target's process has finished with it."""

    @abstractmethod
    async def receive(self, ctx: ReceiveContext) -> Path:
        """Target side: receive one volume; returns the path of the received volume."""


# -------------------------------------------------------------------------------------------- processes


def clean_env() -> dict[str, str]:
    """The environment children get: nothing from the agent's that could change what they do."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}


def file_size_limit(limit: int | None) -> list[str]:
    """An argv prefix that keeps a receiving child from writing any file larger than ``limit`` bytes
    (``prlimit --fsize``: the write fails with EFBIG), so one file cannot outgrow its whole volume's
    declared size; empty without a limit or without prlimit."""
    if limit is None or not shutil.which("prlimit"):
        return []
    return ["prlimit", f"--fsize={max(limit, 1)}", "--"]


def grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer wake-ups per MiB moved); harmless where refused."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)


class Child:
    """A child process in its own process group, with the tail of its stderr kept for messages."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str) -> None:
        self.proc = proc
        self.what = what
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._stderr_task = (
            asyncio.get_running_loop().create_task(self._collect()) if proc.stderr is not None else None
        )
        transport = getattr(proc, "_transport", None)  # asyncio's SubprocessTransport
        for fd in (0, 1):
            with contextlib.suppress(Exception):  # a quick child may have closed its pipe already
                pipe = transport.get_pipe_transport(fd) if transport is not None else None
                pipe_file = pipe.get_extra_info("pipe") if pipe is not None else None
                if pipe_file is not None:
                    grow_pipe(pipe_file.fileno())

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        what: str,
        *,
        stdin: Any = asyncio.subprocess.DEVNULL,
        stdout: Any = asyncio.subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        cwd: Path | None = None,
    ) -> Child:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=tuple(pass_fds),
                cwd=cwd,
                env=clean_env(),
                start_new_session=True,
                limit=CHUNK,
            )
        except FileNotFoundError as exc:
            raise InternalError(f"{what}: {argv[0]} is not installed") from exc
        return cls(proc, what)

    async def _collect(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size > STDERR_TAIL and len(self._tail) > 1:
                self._tail_size -= len(self._tail.popleft())

    def stderr(self) -> str:
        return b"".join(self._tail).decode("utf-8", "replace").strip()

    def last_error_line(self) -> str:
        lines = [line.strip() for line in self.stderr().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 5)
        return code

    async def kill(self) -> None:
        """Kill the whole process group (if the leader still runs) and wait for the leader."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self._stderr_task is not None and not self._stderr_task.done():
            self._stderr_task.cancel()

    def failure(self, code: int, where: str) -> Exception:
        """The error for a failed child: no space becomes InsufficientStorage."""
        text = self.stderr()
        detail = self.last_error_line() or f"exit status {code}"
        if NO_SPACE in text.lower() or f"errno {errno.ENOSPC}" in text.lower():
            return InsufficientStorage(f"no space left on the target while receiving {where}")
        return InternalError(f"{self.what} failed: {detail}")


async def relay_child_stdout(ch: Channel, child: Child, what: str, peer_failed: str) -> None:
    """Stream a sending child's stdout to the peer, then check the child's and the peer's exit status.

    The pump and the child are awaited together: if the websocket fails the pump stops, and the child
    would otherwise block forever on a full pipe.
    """
    assert child.proc.stdout is not None
    pumping = asyncio.ensure_future(pump(child.proc.stdout.read, ch))
    try:
        _, rc = await asyncio.gather(pumping, child.wait())
        if rc != 0:
            raise InternalError(f"{what} failed: {child.last_error_line() or f'exit status {rc}'}")
        done = await ch.recv("exit")
        if done.get("code") != 0:
            raise InternalError(f"{peer_failed}: {done.get('message') or done.get('code')}")
    finally:
        if not pumping.done():
            pumping.cancel()


class WriterSink:
    """A channel sink writing into a stream (a child's stdin); a closed pipe discards the rest."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.broken = False
        self.closed = False

    async def write(self, data: bytes) -> None:
        if self.broken or self.closed:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            self.broken = True

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()


async def fd_reader(fd: int) -> asyncio.StreamReader:
    """An asyncio reader over a pipe or socket fd (the fd is owned by the reader from now on)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
    fh = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), fh)
    return reader


async def fd_writer(fd: int) -> asyncio.StreamWriter:
    """An asyncio writer over a pipe or socket fd (the fd is owned by the writer from now on)."""
    loop = asyncio.get_running_loop()
    fh = os.fdopen(fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, fh)
    return asyncio.StreamWriter(transport, protocol, None, loop)
