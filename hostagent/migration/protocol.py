"""The migration websocket: control messages and volume data between a source and a target agent.

One websocket per migration (``GET /1.0/migrations/<id>/fs`` on the source, opened by the target). Text
frames are JSON control messages ``{"type": ..., ...}``; binary frames are the payload of the one volume
stream in flight (what the local ``rsync``, ``btrfs send``/``receive`` or ``tar`` process reads or
writes). A side sends binary data only after the peer said it is ready for it, and marks the end of its
direction with ``{"type": "eof"}``; because frames arrive in order, ``eof`` is handled right where it is
read, after every byte before it was delivered.

Conversation (S = source, T = target)::

    S: header      {protocol, container, snapshots, volumes, methods, base_image, idmap, size, features}
    T: accept      {method, skip, features}          (or error)
    for each volume i (oldest snapshot first, the container's rootfs last):
      S: volume      {index, snapshot}               (T pre-fills its copy meanwhile)
      S: rsync       {argv}  (rsync only: the server command line the client asks for)
      T: ready       {}                              (T's process runs, its sink is set)
      S <-> T: binary frames, each direction ends with eof
      T: exit        {code}                          (T's process ended)
      S: volume-end  {index, digest, count}
      T: verified    {index}     or    T: manifest-request {index}  ->  S: manifest {lines}... manifest-end
    T: done        {}                                (committed)

The header, accept and volume-end messages are typed, one definition for both sides
(hostagent/migration/messages.py). Either side may send ``{"type": "error", "message", "status"}`` at any
time and close. Memory stays flat:
the websocket reader writes each frame to the local process and waits for the pipe to drain before it
reads the next one, and senders wait for the websocket to drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import ClientError, WSMsgType

from hostagent.jsoninput import parse_json
from hostagent.transfer.ratelimit import Throttle
from orchapi.errors import BadRequest, OrchError, Unavailable, error_for_status

log = logging.getLogger(__name__)

#: 2: manifests carry file capabilities; volumes declare their entry count. 3: manifests hash with BLAKE3
PROTOCOL_VERSION = 3
#: payload bytes per binary frame (at most)
CHUNK = 1024 * 1024
# the largest websocket message either side accepts is orchapi/modes.py's MAX_MESSAGE (a relaying worker
# carries frames up to it too); manifest chunks are far smaller
#: websocket pings: a dead peer is noticed after about this long
HEARTBEAT = 30.0
#: manifest lines per ``manifest`` message
MANIFEST_CHUNK = 2000

_CLOSED = {"type": "__closed__"}
_REFUSED = {"type": "__refused__"}


class ProtocolError(OrchError):
    """The peer broke the migration protocol."""

    status = 502


class Sink(Protocol):
    """Where received binary frames go (a local process's stdin)."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class Channel:
    """A migration websocket with a reader task: control messages queue up, data goes to the sink."""

    def __init__(self, ws: Any, peer: str) -> None:
        self.ws = ws
        self.peer = peer  # "source" or "target", for messages
        self.ws_received = 0  # payload bytes that came over this websocket
        self.ws_sent = 0
        #: the live counters of the data links this conversation's volumes use (hostagent/datalink/)
        self._links: list[Any] = []
        self._control: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sink: Sink | None = None
        self.discarded = 0
        #: why this side stopped accepting the peer's data (a budget exceeded, a sink's check failed)
        self.refused: OrchError | None = None
        self._budget: int | None = None
        self._budget_start = 0
        self._budget_what = ""
        #: the bandwidth limits on the data this side sends / receives (hostagent/transfer/ratelimit.py),
        #: over the websocket here and over the data links (hostagent/transfer/link.py hands them on)
        self.send_throttle: Throttle | None = None
        self.recv_throttle: Throttle | None = None
        #: whether the connection went away under the conversation (closed, reset, an error), as
        #: opposed to the peer breaking the protocol or this side closing it
        self.connection_lost = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    # -- counting -------------------------------------------------------------------------------------
    def count(self, link: Any) -> None:
        """Count a data link's bytes (an object with live ``sent``/``received``) as this channel's."""
        self._links.append(link)

    @property
    def links_used(self) -> int:
        """How many data links carried this conversation's bytes."""
        return len(self._links)

    @property
    def bytes_received(self) -> int:
        """Payload bytes received, over the websocket and the data links together (for progress)."""
        return self.ws_received + sum(link.received for link in self._links)

    @property
    def bytes_sent(self) -> int:
        return self.ws_sent + sum(link.sent for link in self._links)

    # -- sending --------------------------------------------------------------------------------------
    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"type": kind, **fields}))

    async def send_message(self, message: Any) -> None:
        """Send a typed message (hostagent/migration/messages.py: anything with ``to_message()``)."""
        await self.ws.send_str(json.dumps(message.to_message()))

    async def send_data(self, data: bytes) -> None:
        self.ws_sent += len(data)
        if self.send_throttle is not None:
            await self.send_throttle.pace(len(data))
        await self.ws.send_bytes(data)

    async def send_eof(self) -> None:
        await self.send("eof")

    async def send_error(self, exc: BaseException) -> None:
        """Tell the peer why we stop (best effort: the connection may be gone already)."""
        if isinstance(exc, OrchError):
            message, status = str(exc), exc.status
        elif isinstance(exc, asyncio.CancelledError):
            message, status = (
                "migration cancelled on the " + ("target" if self.peer == "source" else "source"),
                499,
            )
        elif isinstance(exc, ConnectionError):
            message, status = f"connection lost: {exc}", 503
        else:
            message, status = f"internal error: {exc}", 500
        try:
            if not self.ws.closed:
                await asyncio.wait_for(self.send("error", message=message, status=status), 1)
        except Exception:  # noqa: BLE001 - the peer will see the connection close instead
            pass

    def explain(self, exc: BaseException) -> BaseException:
        """What to report for ``exc``, which ended the conversation. A write that failed because the
        peer hung up is not the story: the refusal that made it hang up is (a hostile source closes as
        soon as it is refused, often while the target still writes), or else the peer's going away."""
        if isinstance(exc, OrchError | asyncio.CancelledError) or not isinstance(exc, Exception):
            return exc
        if self.refused is not None:
            return self.refused
        if isinstance(exc, ConnectionError | ClientError):
            return Unavailable(f"the connection to the {self.peer} agent closed unexpectedly ({exc})")
        return exc

    def abort(self) -> None:
        """Tear the connection down at once (after a failure): a graceful close could wait forever behind
        data the peer no longer reads, and every pump blocked on the connection must fail now."""
        try:
            sock = self.ws.get_extra_info("socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # noqa: BLE001 - already closed
            pass

    # -- receiving ------------------------------------------------------------------------------------
    def set_sink(self, sink: Sink | None) -> None:
        """Route binary frames to ``sink`` from now on (None: discard them)."""
        self._sink = sink

    def limit(self, budget: int | None, what: str = "") -> None:
        """Accept at most ``budget`` more payload bytes (for the volume ``what``); None lifts the limit.

        Counted as frames arrive, before they reach the sink: a peer sending more than it declared is
        refused at the first byte too many, whatever the method does with them.
        """
        self._budget, self._budget_start, self._budget_what = budget, self.ws_received, what

    def refuse(self, exc: OrchError) -> None:
        """Stop taking the peer's data because of ``exc``: the sink is closed (its process sees the end
        of its input), later frames are dropped, and the next :meth:`recv` raises ``exc``."""
        if self.refused is not None:
            return
        self.refused = exc
        sink, self._sink = self._sink, None
        if sink is not None:
            asyncio.ensure_future(sink.close())
        self._control.put_nowait(_REFUSED)

    async def _deliver(self, data: bytes) -> None:
        self.ws_received += len(data)
        if self.recv_throttle is not None:
            await self.recv_throttle.pace(len(data))  # the websocket is not read meanwhile: back-pressure
        if self.refused is not None:
            self.discarded += len(data)
            return
        if self._budget is not None and self.ws_received - self._budget_start > self._budget:
            self.refuse(
                BadRequest(
                    f"the source sent more than it declared for {self._budget_what or 'the volume'} "
                    f"(over {self._budget} bytes); the transfer was stopped"
                )
            )
            return
        sink = self._sink
        if sink is None:
            self.discarded += len(data)
            return
        try:
            await sink.write(data)
        except OrchError as exc:  # the sink checks what it forwards (e.g. a btrfs stream guard)
            self.refuse(exc)

    async def recv(self, *kinds: str) -> dict[str, Any]:
        """The next control message, which must be one of ``kinds``; raises the peer's error."""
        msg = await self._control.get()
        if msg is _REFUSED:
            self._control.put_nowait(_REFUSED)
            assert self.refused is not None
            raise self.refused
        if msg is _CLOSED:
            self._control.put_nowait(_CLOSED)  # every later recv sees it too
            raise Unavailable(f"the connection to the {self.peer} agent closed unexpectedly")
        kind = msg.get("type")
        if kind == "error":
            status = msg.get("status")
            status = status if isinstance(status, int) and 400 <= status <= 599 else 500
            message = str(msg.get("message") or "unknown error")
            raise error_for_status(status, f"{self.peer} agent: {message}")
        if kinds and kind not in kinds:
            raise ProtocolError(
                f"migration protocol error: expected {' or '.join(kinds)} from the {self.peer}, got {kind!r}"
            )
        return msg

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type == WSMsgType.BINARY:
                    await self._deliver(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        data = parse_json(msg.data, "control message")
                    except BadRequest:
                        data = None
                    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                        self._control.put_nowait(
                            {"type": "error", "status": 502, "message": "sent a malformed control message"}
                        )
                        return
                    if data["type"] == "eof":
                        if self._sink is not None:
                            await self._sink.close()
                        continue
                    self._control.put_nowait(data)
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    self.connection_lost = True
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken connection ends the conversation
            log.debug("migration websocket reader stopped: %s", exc)
            self.connection_lost = True
        finally:
            sink, self._sink = self._sink, None
            if sink is not None:
                try:
                    await sink.close()
                except Exception:  # noqa: BLE001
                    pass
            self._control.put_nowait(_CLOSED)

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:  # noqa: BLE001
            pass


async def pump(read: Callable[[int], Awaitable[bytes]], channel: Channel, eof: bool = True) -> int:
    """Send everything ``read`` returns as binary frames, then ``eof``; returns the byte count."""
    total = 0
    while True:
        data = await read(CHUNK)
        if not data:
            break
        total += len(data)
        await channel.send_data(data)
    if eof:
        await channel.send_eof()
    return total


def require(msg: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """A field of a control message, type-checked (peers are not trusted to send well-formed data)."""
    value = msg.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadRequest(f"migration protocol error: field {key!r} of {msg.get('type')!r} is invalid")
    return value
