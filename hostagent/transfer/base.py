"""The transfer method interface and the plumbing every method shares.

A method is everything orch knows about one way of moving a container's volumes: the facts negotiation
needs (:attr:`~TransferMethod.rank`, :attr:`~TransferMethod.tool`, :attr:`~TransferMethod.refreshes`,
:attr:`~TransferMethod.same_layout`), and the hooks both sessions call instead of asking for a method by
name. Most methods stream one volume at a time between a local process on each side, whose stdin/stdout
the agents relay over the migration websocket (or a data link):

- the source calls :meth:`TransferMethod.send` with the local volume to send (as
  :meth:`~TransferMethod.prepare_send` made it sendable, and the previously sent one, for incremental
  methods);
- the target calls :meth:`TransferMethod.receive` with the place to receive into (made by
  :meth:`~TransferMethod.destination`: for pre-filling methods already holding a copy of the closest
  volume it has, so only the difference travels).

A method that moves no stream (``lxd-migration``: LXD moves the data) overrides the session-level hooks
instead, :meth:`~TransferMethod.send_container` and :meth:`~TransferMethod.receive_container`, whose
defaults hand the session's volume loop back to the session (hostagent/transfer/sides.py).

This module names no implementation: hostagent/transfer/registry.py is the one place that does, and
derives the order of preference and the negotiation from the classes' facts.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hostagent.migration.protocol import CHUNK, Channel, pump
from hostagent.runtimes.base import LAYOUT_ROOTFS, ExportVolume, ImportStaging
from hostagent.runtimes.idmap import IdMap
from orchapi.errors import InsufficientStorage, InternalError

if TYPE_CHECKING:
    from hostagent.transfer.sides import SourceSide, TargetSide

#: how much of a child's stderr is kept for error messages
STDERR_TAIL = 8192
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1024 * 1024
NO_SPACE = "no space left on device"


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
    #: whether a file of the volume has holes to keep (rsync's --sparse costs CPU where none has)
    sparse: bool = True
    #: the stream's compression ("zstd" or "": hostagent/transfer/compression.py)
    compression: str = ""


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
    #: the stream's compression ("zstd" or "": hostagent/transfer/compression.py)
    compression: str = ""
    #: set by the method: the bytes of the volume's stream after decompression (0: not measured)
    payload_bytes: int = 0


class SendPreparation:
    """How the source makes each planned volume sendable by one method; this default sends them as they
    are. :meth:`release` drops whatever was made for sending (called once all were sent, and again on
    the way out, so it must be idempotent)."""

    async def path(self, index: int, volume: ExportVolume) -> Path:
        return volume.path

    async def release(self) -> None:
        return None


class TransferMethod:
    """One transfer method: its facts as class attributes, its two sides as methods.

    A streaming method implements :meth:`send` and :meth:`receive`; a method that moves no stream sets
    ``streams = False`` and implements :meth:`send_container` and :meth:`receive_container` (checked
    when the class is defined, so a plug-in cannot half-implement the interface).
    """

    #: the name negotiated on the wire and given to ``--method``
    name: ClassVar[str] = ""
    #: the order of preference in negotiation: the lowest rank both agents support wins
    rank: ClassVar[int] = 0
    #: the executable both agents need for it (None: nothing to install)
    tool: ClassVar[str | None] = None
    #: whether it can update an existing copy (``--refresh``)
    refreshes: ClassVar[bool] = True
    #: whether its streams carry the runtime's whole volume, so both sides must lay volumes out alike
    same_layout: ClassVar[bool] = False
    #: whether the target should pre-fill each volume with the closest content it has (and a volume that
    #: differs after the transfer gets one repair pass comparing contents)
    prefill: ClassVar[bool] = False
    #: whether every volume travels in full (no deltas, no pre-fill), so that the volumes' sizes are the
    #: bytes that will travel: progress can show a percentage (otherwise only bytes moved and the rate)
    sends_whole_volumes: ClassVar[bool] = False
    #: whether it streams volumes through the agents at all (False: someone else moves the data)
    streams: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.name:
            return
        needed = ("send", "receive") if cls.streams else ("send_container", "receive_container")
        missing = [hook for hook in needed if getattr(cls, hook) is getattr(TransferMethod, hook)]
        if missing:
            raise TypeError(f"transfer method {cls.name} does not implement {', '.join(missing)}")

    # -- the whole container (session-level hooks) ----------------------------------------------------
    async def send_container(self, source: SourceSide) -> None:
        """Source side, once the target accepted this method: by default every volume in turn."""
        await source.send_volumes(self)

    async def receive_container(self, target: TargetSide) -> dict[str, Any]:
        """Target side, once the method is negotiated: by default every volume in turn; returns the
        operation's result."""
        return await target.receive_volumes(self)

    # -- one volume (streaming methods) ---------------------------------------------------------------
    async def prepare_send(self, agent: Any, container: str) -> SendPreparation:
        """Source side, before the first volume: how each volume becomes sendable (as it is, here)."""
        return SendPreparation()

    def destination(
        self,
        runtime: Any,
        staging: ImportStaging,
        snapshot: str | None,
        start: tuple[Path, dict[str, int] | None] | None,
        image: str | None,
        idmap: dict[str, int] | None,
    ) -> Path:
        """Target side, in a worker thread: the staging volume to receive ``snapshot`` into, pre-filled
        from ``start`` (a volume and its id map) or the base ``image`` (given to pre-filling methods
        only), else empty; its owners use ``idmap`` (the source's)."""
        return runtime.import_prefill(
            staging, snapshot, start[0] if start else None, start[1] if start else None, image, idmap
        )

    def tree(self, layout: str) -> str | None:
        """The container's tree inside a received volume of the source's ``layout``: a stream of whole
        volumes brings LXD's volume, the tree in its ``rootfs``; the others bring the tree itself."""
        return "rootfs" if self.same_layout and layout != LAYOUT_ROOTFS else None

    async def send(self, ctx: SendContext) -> None:
        """Source side: stream ``ctx.path``; returns when the target's process has finished with it."""
        raise InternalError(f"transfer method {self.name} streams no volumes")

    async def receive(self, ctx: ReceiveContext) -> Path:
        """Target side: receive one volume; returns the path of the received volume."""
        raise InternalError(f"transfer method {self.name} streams no volumes")


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


class Process(Protocol):
    """What the relays need of a local process: a :class:`Child`, or a pipeline that looks like one
    (hostagent/transfer/compression.py)."""

    proc: asyncio.subprocess.Process

    async def wait(self) -> int: ...
    async def kill(self) -> None: ...
    def stderr(self) -> str: ...
    def last_error_line(self) -> str: ...


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


async def check_sent(ch: Channel, child: Process, rc: int, what: str, peer_failed: str) -> None:
    """After a sending child exited with ``rc``: its failure, else the target's (its ``exit`` message)."""
    if rc != 0:
        raise InternalError(f"{what} failed: {child.last_error_line() or f'exit status {rc}'}")
    done = await ch.recv("exit")
    if done.get("code") != 0:
        raise InternalError(f"{peer_failed}: {done.get('message') or done.get('code')}")


async def relay_child_stdout(ch: Channel, child: Process, what: str, peer_failed: str) -> None:
    """Stream a sending child's stdout to the peer, then check the child's and the peer's exit status.

    The pump and the child are awaited together: if the websocket fails the pump stops, and the child
    would otherwise block forever on a full pipe.
    """
    assert child.proc.stdout is not None
    pumping = asyncio.ensure_future(pump(child.proc.stdout.read, ch))
    try:
        _, rc = await asyncio.gather(pumping, child.wait())
        await check_sent(ch, child, rc, what, peer_failed)
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
