"""TLS to the source agent: our certificate presented, exactly the source's certificate trusted.

The target connects presenting its own server certificate as the TLS client certificate (the source
loaded it into its TLS context when it issued the migration, and checks the token's scope against its
fingerprint); it trusts only the source certificate given in the request (a context of its own, never
the system's CA store nor ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``), and compares the peer certificate's
SHA-256 fingerprint exactly before the request carrying the token is sent, so a man in the middle gets
nothing.
"""

from __future__ import annotations

import contextlib
import errno
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from hostagent.migration.target.request import SourceRef
from orchapi import certs, tlsconfig
from orchapi.errors import Forbidden, OrchError, PeerUnreachable, Unavailable, error_for_status
from orchapi.wsclient import PinnedConnector

#: how long connecting (TCP, TLS, websocket upgrade) to the source may take
CONNECT_TIMEOUT = 60


def client_context(agent: Any, source_pem: str) -> ssl.SSLContext:
    """Present our server certificate; trust exactly the source's certificate and nothing else."""
    ctx = tlsconfig.harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False  # the pin is the identity, not a name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a self-signed leaf is its own trust anchor
    ctx.load_verify_locations(cadata=source_pem)
    ctx.load_cert_chain(str(agent.cert_path), str(agent.key_path))
    return ctx


def check_peer(get_extra_info: Any, fingerprint: str, peer: str = "source") -> None:
    """The same check again on the live connection (in case aiohttp's hook ever changes)."""
    sslobj = get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der or certs.fingerprint_der(der) != fingerprint:
        raise Forbidden(f"the {peer} agent's certificate does not match the one given for the migration")


@contextlib.asynccontextmanager
async def client(agent: Any, ref: SourceRef) -> AsyncIterator[aiohttp.ClientSession]:
    connector = PinnedConnector(client_context(agent, ref.certificate), ref.fingerprint)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, trust_env=False, timeout=timeout) as session:
        yield session


def connect_error(ref: SourceRef, exc: BaseException, peer: str = "source") -> OrchError:
    """What went wrong reaching the ``peer`` agent (the source when pulling, the target when pushing)."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return Forbidden(
            f"the {peer} agent at {ref.where} presented a certificate other than the migration's",
            f"expected {ref.fingerprint}, got {exc.got.hex()}",
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return Forbidden(
            f"TLS with the {peer} agent at {ref.where} failed: its certificate is not the one given for "
            f"the migration, or it does not accept this agent's ({exc})"
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        message = (exc.headers or {}).get("X-Orch-Error") if exc.headers else None
        return error_for_status(
            exc.status, f"the {peer} agent refused the migration: {message or f'{exc.status} {exc.message}'}"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return Unavailable(  # not PeerUnreachable: it may be our certificate refused (TLS 1.3)
            f"cannot reach the {peer} agent at {ref.where}: it closed the connection",
            "with TLS 1.3 this is how a refused client certificate looks: "
            "was the migration issued for this agent?",
        )
    return PeerUnreachable(f"cannot reach the {peer} agent at {ref.where}: {exc}")
