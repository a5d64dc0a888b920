"""A TCP proxy on 127.0.0.1 that cuts connections: the fault injected between two agents.

Every connection to :attr:`FaultProxy.port` is relayed to the upstream address byte for byte (TLS stays
end to end: the agents' pinning is unaffected). A connection that has carried ``cut_after`` bytes from
upstream is reset at once (both sides see the connection drop mid-stream), for the first ``cuts``
connections that get that far; later ones pass untouched. Small connections (a worker's requests) never
reach the threshold.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], cut_after: int, cuts: int = 1) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cut = 0  # connections cut so far
        self.carried: list[int] = []  # bytes from upstream, per finished connection
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        down = 0
        armed = True
        try:
            while not self._stopping:
                readable, _, _ = select.select([client, server], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is server:
                        down += len(data)
                        if armed and down >= self.cut_after:
                            with self._lock:
                                armed = self.cuts_left > 0
                                if armed:
                                    self.cuts_left -= 1
                                    self.cut += 1
                            if armed:
                                _reset(client)
                                _reset(server)
                                return
                        client.sendall(data)
                    else:
                        server.sendall(data)
        except OSError:
            return
        finally:
            self.carried.append(down)
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dropped link or a killed peer looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
