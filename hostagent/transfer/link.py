"""How a transfer method moves its bytes over a data link instead of the migration websocket.

Both sides agree per volume: the source's method sends its control message (``rsync``, ``tar``,
``btrfs``) with a link offer (hostagent/datalink/listener.py); the target dials it and answers
``ready`` with ``link: true`` — or ``false``, and the bytes go over the websocket as before (no data
port reachable, links turned off). Over a link, one dedicated thread per side relays between the TLS
socket and the local process's pipes (hostagent/datalink/relay.py); the control messages (``ready``,
``exit``) stay on the websocket.

A relay thread is a plain thread of its own, not one of the agent's pool, so that long transfers never
starve the pool; cancelling the awaiting task stops the relay and waits for its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from hostagent.datalink.relay import LOCAL, PEER, Relay, RelayResult, close_connection, run_relay
from hostagent.migration.protocol import Channel
from hostagent.transfer.base import Process, check_sent, grow_pipe
from hostagent.transfer.compression import spawn_sender
from orchapi.errors import OrchError

log = logging.getLogger(__name__)

#: the source side: makes an offer (``.message`` to send, ``await .accepted()`` for the socket)
OfferLink = Callable[[], Any]
#: the target side: dials an offer's message, returns the socket
DialLink = Callable[[dict[str, Any]], Awaitable[ssl.SSLSocket]]


async def offer(ch: Channel, make_offer: OfferLink | None, kind: str, **fields: Any) -> ssl.SSLSocket | None:
    """Send the method's control message ``kind`` (with a link offer when the session has links) and
    wait for ``ready``; the data socket if the target took the link, else None (use the websocket)."""
    link = make_offer() if make_offer is not None else None
    if link is not None:
        fields["link"] = link.message
    await ch.send(kind, **fields)
    ready = await ch.recv("ready")
    if link is None:
        return None
    if ready.get("link") is not True:
        link.withdraw()
        return None
    return await link.accepted()


async def accept(msg: dict[str, Any], dial: DialLink | None, what: str) -> ssl.SSLSocket | None:
    """Target side: the data socket for the offer in the method's control message ``msg``, or None
    (no offer, links off here, or the data port unreachable: then the websocket carries the bytes)."""
    link = msg.get("link")
    if dial is None or not isinstance(link, dict):
        return None
    try:
        return await dial(link)
    except OrchError as exc:
        log.warning("data link for %s not usable (%s); using the migration websocket", what, exc)
        return None


async def relay(relay_: Relay, ch: Channel | None = None) -> RelayResult:
    """Run ``relay_`` in a thread of its own, its bytes counted as ``ch``'s; cancelling stops it (and
    waits for the thread)."""
    if ch is not None:
        ch.count(relay_.result)
        relay_.send_throttle, relay_.recv_throttle = ch.send_throttle, ch.recv_throttle
    loop = asyncio.get_running_loop()
    done: asyncio.Future[RelayResult] = loop.create_future()

    def main() -> None:
        try:
            result = run_relay(relay_)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)
        finally:
            close_connection(relay_.sock)

    thread = threading.Thread(target=main, name=f"relay {relay_.what}", daemon=True)
    thread.start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        relay_.stop()
        with contextlib.suppress(BaseException):
            await asyncio.shield(done)
        raise


def _settle(
    future: asyncio.Future[RelayResult], result: RelayResult | None, exc: BaseException | None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)


async def settle(task: asyncio.Future[Any] | None) -> None:
    """End a relay or pump task on the way out: cancel it if it still runs, and collect its outcome
    either way (the failure that matters was raised already; this one must not be logged as lost)."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


def pipe() -> tuple[int, int]:
    """A pipe (read end, write end), both close-on-exec: a child gets its end through its stdio only."""
    r, w = os.pipe2(os.O_CLOEXEC)
    grow_pipe(w)
    return r, w


def close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


async def send_output(
    ch: Channel, sock: ssl.SSLSocket, argv: list[str], what: str, peer_failed: str, compression: str = ""
) -> None:
    """Source side of a one-way method over a link: run ``argv`` (its output compressed as negotiated),
    relay its stdout, check both ends' exit status (ours, then the target's ``exit``)."""
    read_fd, write_fd = pipe()
    child: Process | None = None
    relaying: asyncio.Future[RelayResult] | None = None
    try:
        child = await spawn_sender(compression, argv, what, stdout=write_fd)
        close(write_fd)
        write_fd = None
        relaying = asyncio.ensure_future(relay(Relay(sock, read_fd, None, what=what, until=LOCAL), ch))
        read_fd = None  # the relay's now
        rc, _ = await asyncio.gather(child.wait(), relaying)
        await check_sent(ch, child, rc, what, peer_failed)
    finally:
        await settle(relaying)
        if child is not None:
            await child.kill()
        close(read_fd, write_fd)
        if relaying is None:  # (a relay closes its connection itself)
            with contextlib.suppress(OSError):
                sock.close()


def receive_relay(
    ch: Channel, sock: ssl.SSLSocket, in_fd: int, what: str, limit: int | None, inspect: Any = None
) -> asyncio.Future[RelayResult]:
    """Target side of a one-way method over a link: relay the peer's bytes into ``in_fd`` (closed at
    the end, so the local process sees the end of its input), counted against ``limit``."""
    return asyncio.ensure_future(
        relay(Relay(sock, None, in_fd, limit=limit, inspect=inspect, what=what, until=PEER), ch)
    )
