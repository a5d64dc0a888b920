"""Relaying a volume's bytes between a local process and the peer over one TLS connection, in one thread.

The bulk of a transfer does not go through the migration websocket (asyncio's TLS copies every byte
through memory BIOs and costs ~1.7 CPU-s per GiB on the receiving side here): it goes over a TLS
connection of its own (hostagent/datalink/), driven by a single thread that owns the socket — two threads
on one ``SSLSocket`` corrupt the stream — and moves data straight between the socket and the local
process's pipes (rsync's, tar's, btrfs's).

Both directions share the connection (rsync talks both ways: the receiver sends block checksums back),
so the bytes are framed: ``u32 length`` (big-endian) then the payload; a length of 0 ends a direction
(the peer's process then sees the end of its input). The loop polls the socket and the two pipes,
handling OpenSSL's want-read/want-write and the records it has already decrypted (``pending()``).

What arrives is the peer's, not trusted: frames are bounded, the payload is counted against the
volume's allowance and may be inspected before it reaches the local process (``inspect`` raises to
refuse, e.g. the btrfs stream guard).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from orchapi.errors import BadRequest, OrchError, Unavailable

#: payload bytes read from the local process per frame
CHUNK = 1 << 20
#: the largest frame accepted from the peer
MAX_FRAME = 4 << 20
#: outbound bytes kept pending before the local process is read again (backpressure)
HIGH_WATER = 2 << 20
_LEN = struct.Struct(">I")
#: how often the loop looks at the stop flag while nothing happens
_TICK = 0.5


@dataclass
class RelayResult:
    """What a relay moved: payload bytes sent to and received from the peer."""

    sent: int = 0
    received: int = 0


def _nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


#: when a relay is done: once all of the local process's output went out (the side whose process ends
#: the conversation: rsync's server, a one-way sender), once all of the peer's arrived (the other side),
#: or both
LOCAL, PEER, BOTH = "local", "peer", "both"


class Relay:
    """One relay over ``sock`` (a connected ``SSLSocket``), from ``out_fd`` to the peer and from the
    peer to ``in_fd`` (either may be None: a one-way transfer), done as ``until`` says (LOCAL, PEER,
    BOTH). Call :meth:`run` in the thread that owns the socket; :meth:`stop` from anywhere.

    rsync shows why both one-sided endings exist: the target's relay ends when its ``rsync --server``
    has written its last byte (the server then exits and the target reports its status over the
    control channel); the source's relay ends when all of the server's output reached the rsync client,
    which then waits for that status. Waiting for both would deadlock: the client closes its output only
    once it has the status."""

    def __init__(
        self,
        sock: ssl.SSLSocket,
        out_fd: int | None,
        in_fd: int | None,
        limit: int | None = None,
        inspect: Callable[[memoryview], None] | None = None,
        what: str = "the volume",
        until: str = BOTH,
    ) -> None:
        self.sock, self.out_fd, self.in_fd = sock, out_fd, in_fd
        self.until = until
        self.limit, self.inspect, self.what = limit, inspect, what
        self.result = RelayResult()
        self._stop = threading.Event()
        self._send = bytearray()  # framed bytes waiting for the socket
        self._recv = bytearray()  # decrypted bytes not yet parsed into frames
        self._deliver = memoryview(b"")  # payload waiting for the local process
        self._out_done = out_fd is None  # the local process's output has ended (EOF frame queued)
        self._peer_done = False  # the peer's EOF frame arrived
        self._want_write = False  # OpenSSL asked to wait for the socket to be writable
        if self._out_done:
            self._send += _LEN.pack(0)

    def stop(self) -> None:
        """Make :meth:`run` end soon (it raises :class:`Unavailable`)."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> RelayResult:
        sock = self.sock
        sock.setblocking(False)
        for fd in (self.out_fd, self.in_fd):
            if fd is not None:
                _nonblocking(fd)
        try:
            while not self._finished():
                if self._stop.is_set():
                    raise Unavailable(f"the transfer of {self.what} was stopped")
                if sock.pending() and not self._deliver:
                    self._read_socket()  # records OpenSSL already decrypted: poll() would not see them
                    continue
                for fd, mask in self._poll():
                    if fd == self.out_fd:
                        self._read_local()
                    elif fd == self.in_fd:
                        self._write_local()
                    else:
                        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                            self._read_socket()
                        if mask & select.POLLOUT:
                            self._write_socket()
                if not self._deliver:
                    self._parse()
                if self._send and not self._want_write:
                    self._write_socket()
            return self.result
        finally:
            if self.in_fd is not None:
                _close_quietly(self.in_fd)
                self.in_fd = None

    def _finished(self) -> bool:
        delivered = self._peer_done and not self._deliver
        if delivered and self.in_fd is not None:
            _close_quietly(self.in_fd)  # the local process sees the end of its input
            self.in_fd = None
        sent = self._out_done and not self._send
        return {LOCAL: sent, PEER: delivered, BOTH: sent and delivered}[self.until]

    def _poll(self) -> list[tuple[int, int]]:
        poller = select.poll()
        mask = 0 if self._deliver else select.POLLIN  # backpressure: nothing more until it is delivered
        if self._send or self._want_write:
            mask |= select.POLLOUT
        poller.register(self.sock.fileno(), mask)
        if self.out_fd is not None and not self._out_done and len(self._send) < HIGH_WATER:
            poller.register(self.out_fd, select.POLLIN)
        if self.in_fd is not None and self._deliver:
            poller.register(self.in_fd, select.POLLOUT)
        return poller.poll(_TICK * 1000)

    # -- the socket ----------------------------------------------------------------------------------
    def _read_socket(self) -> None:
        while not self._deliver:
            try:
                data = self.sock.recv(CHUNK + _LEN.size)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._want_write = True
                return
            except (ssl.SSLError, OSError) as exc:
                raise Unavailable(f"the data connection for {self.what} failed: {exc}") from None
            if not data:
                if not self._peer_done or not self._out_done:
                    raise Unavailable(f"the data connection for {self.what} closed before its end")
                return
            self._recv += data
            self._parse()
            if not self.sock.pending():
                return

    def _parse(self) -> None:
        while not self._deliver and len(self._recv) >= _LEN.size:
            length = _LEN.unpack_from(self._recv)[0]
            if length > MAX_FRAME:
                raise BadRequest(f"the peer sent a data frame of {length} bytes for {self.what}")
            if length == 0:
                if self._peer_done:
                    raise BadRequest(f"the peer ended its data for {self.what} twice")
                self._peer_done = True
                del self._recv[: _LEN.size]
                if self._recv:
                    raise BadRequest(f"the peer sent data for {self.what} after its end")
                return
            if self._peer_done:
                raise BadRequest(f"the peer sent data for {self.what} after its end")
            if len(self._recv) < _LEN.size + length:
                return
            payload = bytes(self._recv[_LEN.size : _LEN.size + length])
            del self._recv[: _LEN.size + length]
            self._accept(payload)

    def _accept(self, payload: bytes) -> None:
        if self.in_fd is None:
            raise BadRequest(f"the peer sent data for {self.what}, which was to travel the other way")
        self.result.received += len(payload)
        if self.limit is not None and self.result.received > self.limit:
            raise BadRequest(
                f"the source sent more than it declared for {self.what} (over {self.limit} bytes); "
                "the transfer was stopped"
            )
        if self.inspect is not None:
            self.inspect(memoryview(payload))
        self._deliver = memoryview(payload)
        self._write_local()  # most often the pipe takes it at once

    def _write_socket(self) -> None:
        self._want_write = False
        while self._send:
            try:
                n = self.sock.send(self._send)
            except ssl.SSLWantWriteError:
                self._want_write = True
                return
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLError, OSError) as exc:
                raise Unavailable(f"the data connection for {self.what} failed: {exc}") from None
            del self._send[:n]

    # -- the local process ---------------------------------------------------------------------------
    def _read_local(self) -> None:
        assert self.out_fd is not None
        try:
            data = os.read(self.out_fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._out_done = True
            self._send += _LEN.pack(0)
            return
        self.result.sent += len(data)
        self._send += _LEN.pack(len(data))
        self._send += data

    def _write_local(self) -> None:
        assert self.in_fd is not None
        while self._deliver:
            try:
                n = os.write(self.in_fd, self._deliver)
            except BlockingIOError:
                return
            except BrokenPipeError:
                # the process stopped reading (it failed, or has all it wants): drop the rest, as the
                # websocket path does; its exit status tells what happened
                self._deliver = memoryview(b"")
                return
            self._deliver = self._deliver[n:]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def run_relay(relay: Relay) -> RelayResult:
    """:meth:`Relay.run`, with OrchErrors passed through and anything else reported as unavailable."""
    try:
        return relay.run()
    except OrchError:
        raise
    except OSError as exc:
        raise Unavailable(f"the data connection for {relay.what} failed: {exc}") from None
