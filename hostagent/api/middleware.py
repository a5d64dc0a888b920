"""Who is calling, and how errors look.

Authentication follows LXD: on the unix socket the caller is the local admin; over HTTPS the caller is
trusted only if its TLS client certificate's fingerprint is in the trust store *now* (checked on every
request, since a removed certificate cannot be unloaded from a live TLS context). Only server info and
enrolment with the trust password are open to untrusted callers.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from hostagent.api.responses import error
from orchapi import certs
from orchapi.errors import Forbidden, OrchError

log = logging.getLogger(__name__)

AGENT_KEY: web.AppKey = web.AppKey("agent", object)

#: (method, route path) that untrusted callers may use
PUBLIC = {("GET", "/1.0"), ("POST", "/1.0/certificates")}
#: migration data endpoints: authorised by their handler (a one-shot token scoped to the peer's TLS
#: certificate, see hostagent/migration/tokens.py), not by the trust store
TOKEN_AUTH = {
    ("GET", "/1.0/migrations/{id}/image"),
    ("GET", "/1.0/migrations/{id}/fs"),
    ("GET", "/1.0/sinks/{id}/fs"),  # a push sink (hostagent/migration/sinks.py)
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_fingerprint(request: web.Request) -> str | None:
    """SHA-256 fingerprint of the client's TLS certificate, if it presented one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return certs.fingerprint_der(der) if der else None


def is_unix(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    agent = request.app[AGENT_KEY]
    if is_unix(request):
        request["trusted"], request["client"] = True, "unix"
    else:
        fingerprint = peer_fingerprint(request)
        request["trusted"] = fingerprint is not None and agent.trust.is_trusted(fingerprint)
        request["client"] = fingerprint or "anonymous"
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    if (request.method, path) in TOKEN_AUTH:
        return await handler(request)
    if not request["trusted"] and (request.method, path) not in PUBLIC:
        raise Forbidden(
            "not authorized: this client's certificate is not trusted by the agent",
            "add the agent with `orch remote add` and its trust password",
        )
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"type": "error"}`` JSON; bad input is always a 4xx.

    A body the client could not deliver (bad chunking or content encoding, or a connection that broke
    mid-body) is the client's doing, so a 400 logged in one line: anyone can send one, and a traceback
    per request would let them fill the log. Only real bugs reach the 500 branch, and an untrusted
    caller is not shown their text (it may name paths or internals).
    """
    try:
        return await handler(request)
    except OrchError as exc:
        return error(str(exc), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return error(message.lower() if message else "error", exc.status)
    except json.JSONDecodeError:
        return error("request body is not valid JSON", 400)
    except (web.RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.info("unreadable request body on %s %s from %s: %s", request.method, request.path,
                 request.get("client", "?"), reason)  # fmt: skip
        # the rest of the body is unreadable too: mark it read, or aiohttp drains it after the response
        # and logs the same error again with a traceback; and close, the stream is out of step
        request.content.feed_eof()
        response = error(f"the request body could not be read: {reason}", 400)
        response.force_close()
        return response
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(f"internal error: {exc}" if request.get("trusted") else "internal error", 500)
