"""Websockets to an agent with the same trust as :class:`~orchapi.client.AgentClient`'s requests.

aiohttp checks a server certificate's fingerprint only together with an unverified context, and we need
our own context (the client certificate, TLS 1.2+ and modern ciphers); :class:`PinnedConnector` gives it
both: our context, and the peer's SHA-256 compared right after the handshake, before any request is
written. No CA store and no environment (``REQUESTS_CA_BUNDLE``, proxies) is consulted.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from orchapi import tlsconfig


class PinnedConnector(aiohttp.TCPConnector):
    """TLS with ``ctx``, accepting only the certificate whose SHA-256 is ``fingerprint``."""

    def __init__(self, ctx: ssl.SSLContext, fingerprint: str, limit: int = 4) -> None:
        super().__init__(ssl=ctx, force_close=True, limit=limit)
        self._pin = aiohttp.Fingerprint(bytes.fromhex(fingerprint))

    def _get_fingerprint(self, req: Any) -> aiohttp.Fingerprint:  # noqa: ARG002 - aiohttp's hook
        return self._pin


def session_for(client: Any) -> tuple[aiohttp.ClientSession, str]:
    """An aiohttp session reaching ``client``'s agent (an :class:`~orchapi.client.AgentClient`), and the
    base URL websocket paths go after."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    if client.url.startswith("unix://"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=client.url[len("unix://") :])
        base = "http://orch-agent"
    else:
        ctx = (
            tlsconfig.client_context(*client.client_cert)
            if client.client_cert
            else tlsconfig.client_context(None, None)
        )
        connector = PinnedConnector(ctx, client.fingerprint, limit=8)
        base = client.url
    session = aiohttp.ClientSession(connector=connector, trust_env=False, timeout=timeout)
    return session, base
