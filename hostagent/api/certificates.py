"""``/1.0/certificates``: the trust store.

``POST`` is how a client enrols: it sends its certificate and the trust password (untrusted callers) or
just the certificate (trusted callers adding someone else). Password attempts are admitted, counted and
run by :mod:`hostagent.enrolment`: a client that must wait is refused at once with 429 and a
``Retry-After``, before its request body is even read, so guessing costs the agent next to nothing.
"""

from __future__ import annotations

from aiohttp import web

from hostagent.api.middleware import AGENT_KEY, peer_fingerprint
from hostagent.api.responses import error, json_body, recursion, sync
from hostagent.enrolment import Refused
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
    try:
        return await _add_certificate(request)
    except Refused as exc:
        response = error(str(exc), exc.status)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response


async def _add_certificate(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    trusted = request["trusted"]
    if not trusted:
        agent.enrolment.precheck(request.remote)
    body = await json_body(request)  # an untrusted caller's body is read only up to a small cap
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
    if not trusted:
        if not agent.trust.has_password():
            raise Forbidden(
                "this agent has no trust password set",
                "set one with `orch config set <remote>: core.trust_password ...`",
            )
        password = body.get("password")
        if not isinstance(password, str):
            password = ""
        if not await agent.enrolment.check_password(request.remote, password):
            raise Forbidden("wrong trust password")
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
