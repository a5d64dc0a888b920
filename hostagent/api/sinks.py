"""Push sinks, target side: ``GET /1.0/sinks/<id>/fs``, the websocket a pushing peer dials.

Not authorised by the trust store but by ``Authorization: Bearer <token>`` plus the TLS client
certificate the sink was opened for (hostagent/migration/sinks.py); refusals are 403 JSON errors, the
message also in ``X-Orch-Error``, as on the source's migration endpoints. The handler holds the
websocket while the receiving operation uses it.
"""

from __future__ import annotations

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY
from hostagent.api.migration import bearer_token, refusal
from hostagent.migration.protocol import HEARTBEAT
from orchapi.errors import BadRequest, OrchError
from orchapi.modes import MAX_MESSAGE

routes = web.RouteTableDef()


def _redeem(request: web.Request, consume: bool) -> object:
    token, fingerprint = bearer_token(
        request, "the sink endpoint needs the pushing agent's TLS client certificate"
    )
    return request.app[AGENT_KEY].sinks.redeem(request.match_info["id"], token, fingerprint, consume)


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
