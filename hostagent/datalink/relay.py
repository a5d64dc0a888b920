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
Bytes are copied once each way: a frame is assembled once for OpenSSL and sent from an offset; what
OpenSSL decrypts lands in one reused buffer and is written to the pipe from there.

What arrives is the peer's, not trusted: frames are bounded, the payload is counted against the
volume's allowance and may be inspected before it reaches the local process (``inspect`` raises to
refuse, e.g. the btrfs stream guard).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hostagent.transfer.ratelimit import Throttle
from orchapi.errors import BadRequest, OrchError, Unavailable

#: payload bytes read from the local process per frame
CHUNK = 1 << 20
#: what is read at once under a bandwidth limit: the limit is paid after each read, so a big read would
#: go out as one burst above the rate (a 1 MiB chunk is half a second's worth at 2 MiB/s)
THROTTLED_CHUNK = 64 << 10
#: the largest frame accepted from the peer
MAX_FRAME = 4 << 20
#: outbound bytes kept pending before the local process is read again (backpressure)
HIGH_WATER = 2 << 20
#: decrypted bytes gathered before they are written to the local process (OpenSSL hands out at most
#: one record per read: a pipe write per record would be 16 times the system calls)
RECV_BUFFER = 1 << 20
RECORD = 16 << 10
_LEN = struct.Struct(">I")
#: how often the loop looks at the stop flag while nothing happens
_TICK = 0.5

#: when a relay is done: once all of the local process's output went out (the side whose process ends
#: the conversation: rsync's server, a one-way sender), once all of the peer's arrived (the other side),
#: or both
LOCAL, PEER, BOTH = "local", "peer", "both"


@dataclass
class RelayResult:
    """What a relay moved: payload bytes sent to and received from the peer (live while it runs)."""

    sent: int = 0
    received: int = 0


def _nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


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
        self.limit, self.inspect, self.what, self.until = limit, inspect, what, until
        self.result = RelayResult()
        self._stop = threading.Event()
        # outbound: whole frames waiting for the socket, the first one partly sent
        self._lbuf = bytearray(CHUNK)  # what the local process wrote, before it is framed
        self._lview = memoryview(self._lbuf)
        self._frames: deque[memoryview] = deque()
        self._pending_out = 0
        # the local process's output has ended (its EOF frame queued); a receiver sends nothing at all,
        # so that a sender never closes with unread bytes (which would reset the connection)
        self._out_done = out_fd is None
        self._want_write = False  # OpenSSL asked to wait for the socket to be writable
        # inbound: decrypted bytes in one reused buffer, [start, end) not yet handled
        self._rbuf = bytearray(RECV_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._start = self._end = 0
        self._header = bytearray()  # a frame header cut by a read
        self._remaining = 0  # payload bytes left of the current frame
        self._deliver = memoryview(b"")  # payload the local process has not taken yet
        self._peer_done = False  # the peer's EOF frame arrived
        self._closed = False  # the peer closed the connection (after its EOF frame, if all is well)
        # bandwidth limits (set by hostagent/transfer/link.py): past a bucket's rate, the local process
        # (outbound) or the socket (inbound) is not read again until the debt is paid
        self.send_throttle: Throttle | None = None
        self.recv_throttle: Throttle | None = None
        self._send_hold = self._recv_hold = 0.0

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
                if sock.pending() and self._idle_inbound() and self._recv_hold <= time.monotonic():
                    self._read_socket()  # records OpenSSL already decrypted: poll() would not see them
                    continue
                for fd, mask in self._poll():
                    if fd == self.out_fd:
                        self._read_local()
                    elif fd == self.in_fd:
                        self._write_local()
                        self._handle()
                    else:
                        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                            self._read_socket()
                        if mask & select.POLLOUT:
                            self._write_socket()
                if self._frames and not self._want_write:
                    self._write_socket()
            return self.result
        finally:
            if self.in_fd is not None:
                _close_quietly(self.in_fd)
                self.in_fd = None

    def _idle_inbound(self) -> bool:
        """Whether the inbound side may read the socket (everything read so far is handled)."""
        if self._deliver or self._start != self._end:
            return False
        if self._closed and not self._peer_done:
            # its end frame, if any, came with the last bytes read: those are all handled now
            raise Unavailable(f"the data connection for {self.what} closed before its end")
        return not self._closed

    def _finished(self) -> bool:
        delivered = self._peer_done and not self._deliver and self._start == self._end
        if delivered and self.in_fd is not None:
            _close_quietly(self.in_fd)  # the local process sees the end of its input
            self.in_fd = None
        sent = self._out_done and not self._frames
        return {LOCAL: sent, PEER: delivered, BOTH: sent and delivered}[self.until]

    def _poll(self) -> list[tuple[int, int]]:
        poller = select.poll()
        now = time.monotonic()
        timeout = _TICK
        # backpressure: the process first; and a bandwidth limit's debt paid
        mask = 0
        if self._idle_inbound():
            if self._recv_hold <= now:
                mask = select.POLLIN
            else:
                timeout = min(timeout, self._recv_hold - now)
        if self._frames or self._want_write:
            mask |= select.POLLOUT
        poller.register(self.sock.fileno(), mask)
        if self.out_fd is not None and not self._out_done and self._pending_out < HIGH_WATER:
            if self._send_hold <= now:
                poller.register(self.out_fd, select.POLLIN)
            else:
                timeout = min(timeout, self._send_hold - now)
        if self.in_fd is not None and self._deliver:
            poller.register(self.in_fd, select.POLLOUT)
        return poller.poll(max(timeout, 0.0) * 1000)

    # -- outbound --------------------------------------------------------------------------------------
    def _queue(self, frame: bytes | bytearray) -> None:
        self._frames.append(memoryview(frame))
        self._pending_out += len(frame)

    def _read_local(self) -> None:
        """Read what the local process wrote — as much as is there, up to a frame — and queue it."""
        assert self.out_fd is not None
        n = 0
        chunk = THROTTLED_CHUNK if self.send_throttle is not None and self.send_throttle.limited() else CHUNK
        while n < chunk:
            try:
                got = os.readv(self.out_fd, [self._lview[n:chunk]])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                got = 0
            if got == 0:
                self._out_done = True
                break
            n += got
        if n:
            self.result.sent += n
            self._queue(_LEN.pack(n) + self._lview[:n])  # the one copy: into the frame OpenSSL encrypts
            if self.send_throttle is not None:
                self._send_hold = time.monotonic() + self.send_throttle.take(n)
        if self._out_done:
            self._queue(_LEN.pack(0))

    def _write_socket(self) -> None:
        self._want_write = False
        while self._frames:
            head = self._frames[0]
            try:
                n = self.sock.send(head)
            except ssl.SSLWantWriteError:
                self._want_write = True
                return
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLError, OSError) as exc:
                raise Unavailable(f"the data connection for {self.what} failed: {exc}") from None
            self._pending_out -= n
            if n == len(head):
                self._frames.popleft()
            else:
                self._frames[0] = head[n:]

    # -- inbound ---------------------------------------------------------------------------------------
    def _read_socket(self) -> None:
        """Read what the socket has — as many records as fit the buffer — and hand it on."""
        while self._idle_inbound():
            filled, drained, closed = 0, False, False
            room = RECV_BUFFER - RECORD
            if self.recv_throttle is not None and self.recv_throttle.limited():
                room = THROTTLED_CHUNK
            while filled < room:
                try:
                    n = self.sock.recv_into(self._rview[filled:])
                except ssl.SSLWantReadError:
                    drained = True
                    break
                except ssl.SSLWantWriteError:
                    self._want_write = drained = True
                    break
                except (ssl.SSLError, OSError) as exc:
                    raise Unavailable(f"the data connection for {self.what} failed: {exc}") from None
                if n == 0:
                    closed = drained = True
                    break
                filled += n
            if closed:
                self._closed = True
            if filled:
                self._start, self._end = 0, filled
                self._handle()
                if self.recv_throttle is not None:
                    wait = self.recv_throttle.take(filled)
                    if wait:
                        self._recv_hold = time.monotonic() + wait
                        return  # the socket waits (and so does the peer, by TCP's back-pressure)
            if drained:
                return

    def _handle(self) -> None:
        """Handle the read bytes [start, end): frame headers, and payload to the local process."""
        while not self._deliver and self._start < self._end:
            if self._remaining == 0:
                self._take_header()
                continue
            take = min(self._remaining, self._end - self._start)
            payload = self._rview[self._start : self._start + take]
            self._start += take
            self._remaining -= take
            self._accept(payload)

    def _take_header(self) -> None:
        need = _LEN.size - len(self._header)
        piece = self._rview[self._start : self._start + need]
        self._header += piece
        self._start += len(piece)
        if len(self._header) < _LEN.size:
            return
        length = _LEN.unpack(self._header)[0]
        self._header.clear()
        if self._peer_done:
            raise BadRequest(f"the peer sent data for {self.what} after its end")
        if length == 0:
            self._peer_done = True
            if self._start != self._end:
                raise BadRequest(f"the peer sent data for {self.what} after its end")
            return
        if length > MAX_FRAME:
            raise BadRequest(f"the peer sent a data frame of {length} bytes for {self.what}")
        if self.in_fd is None:
            raise BadRequest(f"the peer sent data for {self.what}, which was to travel the other way")
        self._remaining = length

    def _accept(self, payload: memoryview) -> None:
        self.result.received += len(payload)
        if self.limit is not None and self.result.received > self.limit:
            raise BadRequest(
                f"the source sent more than it declared for {self.what} (over {self.limit} bytes); "
                "the transfer was stopped"
            )
        if self.inspect is not None:
            self.inspect(payload)
        self._deliver = payload
        self._write_local()  # most often the pipe takes it at once

    def _write_local(self) -> None:
        if self.in_fd is None:
            self._deliver = memoryview(b"")
            return
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


def close_connection(sock: ssl.SSLSocket, linger: float = 2.0) -> None:
    """Close a relayed connection without losing what is still in flight to the peer.

    Closing a TCP socket that has unread bytes makes the kernel send a reset, and a reset can take the
    peer's last, not yet read bytes (its end frame) with it. So: end our direction (FIN after our last
    record), read and drop what the peer still sends until it closes too (or ``linger`` seconds pass),
    then close.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)  # the plain socket's: the TLS state stays as it is
        sock.settimeout(linger)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and sock.recv(RECORD):
            pass
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def run_relay(relay: Relay) -> RelayResult:
    """:meth:`Relay.run`, with OrchErrors passed through and anything else reported as unavailable."""
    try:
        return relay.run()
    except OrchError:
        raise
    except OSError as exc:
        raise Unavailable(f"the data connection for {relay.what} failed: {exc}") from None
