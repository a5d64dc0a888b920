"""Push mode, source side: dial the target's sink and send the container over it.

``POST /1.0/migrations/<id>/push`` (trusted: the worker) names the target's sink and its secret and the
addresses to try, the one the worker reached first. The source dials each in turn presenting its own
certificate and trusting exactly the target certificate the migration was issued for (the same pinned
TLS a pulling target uses, hostagent/migration/target/connect.py), and then converses as it does when
pulled from (:class:`~hostagent.migration.source.SourceSession`): the header, the target's choice and
its verification do not depend on who dialed. Issuing the push spends the migration's ``fs`` token, so
the same migration cannot also be pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from typing import Any

import aiohttp

from hostagent.migration.protocol import HEARTBEAT
from hostagent.migration.source import SourceSession
from hostagent.migration.target.connect import CONNECT_TIMEOUT, check_peer, client, connect_error
from hostagent.migration.target.request import SourceRef
from hostagent.migration.tokens import Migration
from hostagent.operations import Operation
from orchapi import certs
from orchapi.api.receive import PushRequest
from orchapi.errors import BadRequest, Forbidden, OrchError, PeerUnreachable
from orchapi.modes import MAX_MESSAGE

#: host:port, [v6]:port
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z")
_ID = re.compile(r"^[0-9a-f-]{36}\Z")


def parse_push(body: dict[str, Any]) -> PushRequest:
    """The push request (:class:`~orchapi.api.receive.PushRequest`), checked."""
    addresses = body.get("addresses")
    if (
        not isinstance(addresses, list)
        or not 1 <= len(addresses) <= 16
        or not all(isinstance(a, str) and _ADDRESS.match(a) for a in addresses)
    ):
        raise BadRequest("addresses must list the target agent's HOST:PORT addresses (1 to 16)")
    sink, secret = body.get("sink"), body.get("secret")
    if not isinstance(sink, str) or not _ID.match(sink):
        raise BadRequest("sink must be the id of the target's push sink")
    if not isinstance(secret, str) or not 0 < len(secret) <= 512:
        raise BadRequest("secret must be the target sink's secret")
    return PushRequest(list(dict.fromkeys(addresses)), sink, secret)


def start_push(agent: Any, migration: Migration, addresses: list[str], sink: str, secret: str) -> Operation:
    """Spend the migration's fs token and start the operation that dials and sends."""
    if migration.revoked or migration.expired():
        raise Forbidden("this migration was revoked or has expired", "issue a new migration")
    if "fs" in migration.used:
        raise Forbidden("this migration was used already (pulled or pushed)")
    migration.used.add("fs")
    pem = migration.target_certificate

    async def work(op: Operation) -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        migration.sessions.add(task)  # a revoke cancels the push as it does a pull
        try:
            async with contextlib.AsyncExitStack() as stack:
                ws, address = await _dial(stack, agent, addresses, sink, secret, pem)
                op.progress(target=address)
                source = SourceSession(agent, migration, ws)
                await source.run()
                if source.failure is not None:
                    raise source.failure
                ch = source.channel
                return {"target": address, "bytes_sent": ch.bytes_sent, "bytes_received": ch.bytes_received}
        finally:
            migration.sessions.discard(task)

    resources = {"containers": [f"/1.0/containers/{migration.container}"]}
    return agent.operations.start(f"Pushing container {migration.container}", work, resources)


async def _dial(
    stack: contextlib.AsyncExitStack, agent: Any, addresses: list[str], sink: str, secret: str, pem: str
) -> tuple[Any, str]:
    """The websocket to the first address whose agent takes the connection (its session kept open on
    ``stack``), and that address."""
    fingerprint = certs.fingerprint_pem(pem)
    failures: list[str] = []
    for address in addresses:
        ref = SourceRef(f"https://{address}/1.0/sinks/{sink}", secret, pem, fingerprint)
        attempt = contextlib.AsyncExitStack()
        session = await attempt.enter_async_context(client(agent, ref))
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(
                    ref.url + "/fs",
                    headers={"Authorization": f"Bearer {secret}"},
                    max_msg_size=MAX_MESSAGE,
                    heartbeat=HEARTBEAT,
                    compress=0,
                ),
                CONNECT_TIMEOUT,
            )
            check_peer(ws.get_extra_info, fingerprint, peer="target")
        except TimeoutError:
            failures.append(f"{address}: no answer within {CONNECT_TIMEOUT} s")
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            failure = connect_error(ref, exc, peer="target")
            if isinstance(exc, aiohttp.ClientResponseError):
                await attempt.aclose()
                raise failure from None  # the target itself refused: another address would too
            failures.append(str(failure))
        except OrchError as exc:
            failures.append(f"{address}: {exc}")
        else:
            await stack.enter_async_context(attempt)
            return ws, address
        await attempt.aclose()
    raise PeerUnreachable("cannot reach the target agent at any of its addresses: " + "; ".join(failures))
