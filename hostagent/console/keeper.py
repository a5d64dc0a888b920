"""The console keeper: ``python -m hostagent.console.keeper`` holds one container's terminal.

runc creates the container's console (a pty whose slave is the init's stdio and /dev/console) and sends
its master over ``--runc-socket``; the keeper holds it for the container's life. It always reads the
master, so the container never blocks on console output, and writes everything to a bounded
:class:`~hostagent.console.ringlog.RingLog`. Agents attach through ``--attach-socket``: each attached
connection receives the output as it comes and sends frames (``d`` + data, or ``r`` + "W H" to resize),
each a type byte and a 4-byte big-endian length before the payload.

The keeper is its own session, so an agent that exits or restarts leaves it (and the console) running;
it exits when the container's last terminal user is gone (the master reads EIO) and removes its socket
directory. Both sockets live in a private directory (0700, the agent's) that only the agent can enter.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import selectors
import shutil
import socket
import struct
import sys
import termios
from pathlib import Path

from hostagent.console.ringlog import DEFAULT_LIMIT, RingLog

#: how long runc may take to connect and hand over the terminal
RUNC_TIMEOUT = 60.0
#: how long an attached agent may block the keeper before it is dropped (output must keep flowing)
SEND_TIMEOUT = 2.0
HEADER = struct.Struct(">cI")
MAX_FRAME = 1 << 20


def set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class Client:
    """One attached connection and its partly received frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def frames(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self.buffer)
            if length > MAX_FRAME:
                raise ValueError("frame too large")
            if len(self.buffer) < HEADER.size + length:
                break
            out.append((kind, self.buffer[HEADER.size : HEADER.size + length]))
            self.buffer = self.buffer[HEADER.size + length :]
        return out


def receive_terminal(runc_socket: Path) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(runc_socket))
        listener.listen(1)
        print("ready", flush=True)  # the agent starts runc only now
        listener.settimeout(RUNC_TIMEOUT)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(RUNC_TIMEOUT)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    os.unlink(runc_socket)
    if not fds:
        raise SystemExit("runc sent no terminal")
    return fds[0]


def serve(master: int, attach: socket.socket, log: RingLog) -> None:
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ, "master")
    sel.register(attach, selectors.EVENT_READ, "attach")
    clients: dict[socket.socket, Client] = {}

    def drop(sock: socket.socket) -> None:
        sel.unregister(sock)
        clients.pop(sock, None)
        sock.close()

    while True:
        for key, _ in sel.select():
            if key.data == "master":
                try:
                    data = os.read(master, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    return  # the container's terminal is closed: it stopped
                log.write(data)
                for sock in list(clients):
                    try:
                        sock.sendall(data)
                    except OSError:  # gone, or too slow to keep up (SEND_TIMEOUT)
                        drop(sock)
            elif key.data == "attach":
                sock, _ = attach.accept()
                sock.settimeout(SEND_TIMEOUT)
                clients[sock] = Client(sock)
                sel.register(sock, selectors.EVENT_READ, "client")
            else:
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                    frames = clients[sock].frames(data) if data else None
                except (OSError, ValueError):
                    frames = None
                if frames is None:
                    drop(sock)
                    continue
                for kind, payload in frames:
                    if kind == b"d":
                        os.write(master, payload)
                    elif kind == b"r":
                        try:
                            width, height = (int(v) for v in payload.split())
                            set_size(master, width, height)
                        except (ValueError, OSError):
                            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="private directory for both sockets")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--height", type=int, default=25)
    args = parser.parse_args(argv)
    try:
        master = receive_terminal(args.dir / "runc")
        set_size(master, args.width, args.height)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as attach:
            attach.bind(str(args.dir / "attach"))
            attach.listen(8)
            sys.stdout.close()  # the agent stops reading once runc has started
            log = RingLog(args.log, args.limit)
            try:
                serve(master, attach, log)
            finally:
                log.close()
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
