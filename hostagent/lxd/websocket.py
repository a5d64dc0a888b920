"""LXD's websockets (exec, console), read so that nothing LXD sent is lost.

LXD pings every websocket every 10 s, the first time right after the upgrade, and closes the connection
the moment its operation ends. aiohttp's ``autoping`` answers a ping when the ping is *read*: if LXD has
closed by then, the answer fails and aiohttp gives the websocket up together with everything queued
behind the ping, which for a quick command is its whole output (measured against LXD 5.0.2: read after
the command's end, 14 of 15 outputs were lost with autoping, none without). So pings are answered here,
and an answer that cannot be sent any more is not an error: what LXD sent before closing is still read.
"""

from __future__ import annotations

import contextlib

import aiohttp

#: the largest frame taken from LXD (it sends at most 128 KiB of output per frame)
MAX_MESSAGE = 1 << 20


async def connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """One of an LXD operation's websockets, with pings left to :func:`receive`."""
    return await session.ws_connect(url, max_msg_size=MAX_MESSAGE, autoping=False)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The next message that is not a ping or a pong; pings are answered while the peer still listens."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.PING:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                await ws.pong(msg.data)
            continue
        if msg.type != aiohttp.WSMsgType.PONG:
            return msg
