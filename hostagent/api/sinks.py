"""Push sinks, target side: ``GET /1.0/sinks/<id>/fs``, the websocket a pushing peer dials.

Not authorised by the trust store but by ``Authorization: Bearer <token>`` plus the TLS client
certificate the sink was opened for (hostagent/migration/sinks.py); refusals are 403 JSON errors, the
message also in ``X-Orch-Error``, as on the source's migration endpoints. The handler holds the
websocket while the receiving operation uses it.
"""

from __future__ import annotations

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY, peer_fingerprint
from hostagent.api.migration import refusal
from hostagent.migration.protocol import HEARTBEAT, MAX_MESSAGE
from orchapi.errors import BadRequest, Forbidden, OrchError

routes = web.RouteTableDef()


def _redeem(request: web.Request, consume: bool) -> object:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Forbidden("missing migration token", "send it as 'Authorization: Bearer <token>'")
    fingerprint = peer_fingerprint(request)
    if fingerprint is None:
        raise Forbidden("the sink endpoint needs the pushing agent's TLS client certificate")
    agent = request.app[AGENT_KEY]
    return agent.sinks.redeem(request.match_info["id"], token.strip(), fingerprint, consume)


@routes.get("/1.0/sinks/{id}/fs")
async def sink_fs(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=HEARTBEAT, compress=False)
    try:
        _redeem(request, consume=False)  # who may ask comes first; a plain GET must not burn it
        if not ws.can_prepare(request).ok:
            raise BadRequest("expected a websocket upgrade")
        sink = _redeem(request, consume=True)
    except OrchError as exc:
        return refusal(exc)
    await ws.prepare(request)
    if sink.connected.done():  # type: ignore[attr-defined]
        await ws.close(message=b"the sink was closed")  # its operation ended meanwhile
        return ws
    sink.connected.set_result(ws)  # type: ignore[attr-defined]
    await sink.finished.wait()  # type: ignore[attr-defined]
    return ws
