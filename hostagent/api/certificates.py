"""``/1.0/certificates``: the trust store.

``POST`` is how a client enrols: it sends its certificate and the trust password (untrusted callers) or
just the certificate (trusted callers adding someone else). Wrong passwords are answered ever more slowly
per address (see :class:`hostagent.trust.PasswordThrottle`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY, peer_fingerprint
from hostagent.api.responses import json_body, recursion, sync
from orchapi import certs
from orchapi.errors import BadRequest, Forbidden

routes = web.RouteTableDef()


@routes.get("/1.0/certificates")
async def list_certificates(request: web.Request) -> web.Response:
    entries = request.app[AGENT_KEY].trust.list()
    if recursion(request):
        return sync(entries)
    return sync([f"/1.0/certificates/{e['fingerprint']}" for e in entries])


@routes.post("/1.0/certificates")
async def add_certificate(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    body = await json_body(request)
    pem = body.get("certificate")
    name = body.get("name") or "client"
    if not pem:
        der = (
            request.transport.get_extra_info("ssl_object").getpeercert(True)
            if peer_fingerprint(request)
            else b""
        )
        if not der:
            raise BadRequest("no certificate given", "send it as 'certificate' (PEM) in the request body")
        pem = certs.der_to_pem(der)
    if not isinstance(pem, str):
        raise BadRequest("certificate must be a PEM string")
    certs.load_pem(pem)  # a clear 400 for garbage before any password check
    if not request["trusted"]:
        address = request.remote or "unknown"
        throttle = agent.trust.throttle
        await asyncio.sleep(throttle.delay(address))
        password = body.get("password")
        if not agent.trust.has_password():
            raise Forbidden(
                "this agent has no trust password set",
                "set one with `orch config set <remote>: core.trust_password ...`",
            )
        ok = await agent.blocking(agent.trust.check_password, password if isinstance(password, str) else "")
        if not ok:
            throttle.failed(address)
            raise Forbidden("wrong trust password")
        throttle.succeeded(address)
    fingerprint = await agent.blocking(agent.trust.add, pem, name)
    return sync({"fingerprint": fingerprint}, status=201)


@routes.get("/1.0/certificates/{fingerprint}")
async def get_certificate(request: web.Request) -> web.Response:
    return sync(request.app[AGENT_KEY].trust.get(request.match_info["fingerprint"]))


@routes.delete("/1.0/certificates/{fingerprint}")
async def delete_certificate(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    await agent.blocking(agent.trust.remove, request.match_info["fingerprint"])
    return sync({})
