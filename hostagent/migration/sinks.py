"""Push sinks, target side: where a peer that dials this agent delivers a container (push mode).

``POST /1.0/containers`` with ``source: {type: migration, mode: push, certificate: PEM}`` opens a sink
for the peer holding that certificate (the source agent, or a worker relaying for it): one ``fs`` token
with the same properties as a migration's (256 random bits kept as a hash, single use, 60 s to be
redeemed, scoped to this sink and to the peer certificate's fingerprint; see
:mod:`hostagent.migration.tokens`), and the certificate loaded into the TLS context so the peer's
handshake succeeds. The receiving operation waits for the peer's websocket on ``GET
/1.0/sinks/<id>/fs`` and then receives exactly as a pull does: who dialed does not change who sends the
header, who chooses and who verifies.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hostagent.migration.tokens import DEFAULT_TTL, check_token, token_hash

#: the sink's one channel
FS = "fs"


@dataclass
class Sink:
    """One open sink: whose connection it takes, and the hand-over to the operation that waits."""

    id: str
    container: str
    peer_fingerprint: str
    expires: float
    hashes: dict[str, bytes]
    used: set[str] = field(default_factory=set)
    revoked: bool = False
    #: the peer's websocket, handed to the waiting operation
    connected: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: set when the operation is done with the websocket (the handler holding it then returns)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def expired(self) -> bool:
        return time.monotonic() > self.expires


class SinkRegistry:
    """The sinks open on this agent (in memory: a restart closes them, and the worker opens new ones)."""

    def __init__(self) -> None:
        self._items: dict[str, Sink] = {}

    def open(self, container: str, peer_fingerprint: str, ttl: int = DEFAULT_TTL) -> tuple[Sink, str]:
        """A sink for ``container``; the clear-text token, shown once."""
        token = secrets.token_urlsafe(32)
        sink = Sink(
            str(uuid.uuid4()), container, peer_fingerprint, time.monotonic() + ttl, {FS: token_hash(token)}
        )
        self._items[sink.id] = sink
        return sink, token

    def redeem(self, sink_id: str, token: str, peer_fingerprint: str | None, consume: bool = True) -> Sink:
        sink = self._items.get(sink_id)
        check_token(sink, FS, token, peer_fingerprint, consume)  # once only: its hash is spent then
        assert sink is not None
        return sink

    def close(self, sink: Sink) -> None:
        """The operation is over: no connection is taken any more, a held one is let go."""
        sink.revoked = True
        sink.finished.set()
        if not sink.connected.done():
            sink.connected.cancel()
        self._items.pop(sink.id, None)
