"""The REST client for an agent (LXD's ``client/`` counterpart).

:class:`AgentClient` speaks to one agent over HTTPS (pinned by fingerprint, optionally with our client
certificate) or over its unix socket. It unwraps LXD-style envelopes, waits on operations, and turns every
transport failure into an :class:`~orchapi.errors.OrchError` with a message a user can act on.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from orchapi import certs, tlsconfig
from orchapi.endpoints import Endpoints
from orchapi.errors import Forbidden, OrchError, PeerUnreachable, Unavailable, error_for_status
from orchapi.transport import PinnedHTTPSAdapter, UnixSocketAdapter

DEFAULT_PORT = 8443

#: TLS alerts that mean "the server does not accept the certificate you presented"
_CLIENT_CERT_REJECTED = ("certificate unknown", "unknown ca", "certificate required", "bad certificate")


class CertificateMismatch(OrchError):
    """The server presents a certificate other than the pinned one."""

    status = 495

    def __init__(self, url: str, expected: str, actual: str | None) -> None:
        self.url, self.expected, self.actual = url, expected, actual
        super().__init__(
            f"server certificate of {url} changed: expected {expected}, got {actual or 'unknown'}"
        )


def split_https_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORT


def fetch_server_certificate(url: str, timeout: float = 10.0) -> str:
    """The PEM certificate an HTTPS agent presents, without trusting it (to show its fingerprint)."""
    host, port = split_https_url(url)
    ctx = tlsconfig.client_context(None, None)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise _unreachable(url, exc) from None
    if not der:
        raise Unavailable(f"{url} presented no certificate")
    return certs.der_to_pem(der)


def _unreachable(url: str, exc: BaseException) -> Unavailable:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return Unavailable(
        f"cannot reach the agent at {url}: {reason}", "check the address and that orch-agent runs there"
    )


def operation_error(op: dict[str, Any]) -> OrchError:
    """The error of a failed operation as the agent classed it (its HTTP status, and PeerUnreachable
    kept as such: a caller may try the transfer the other way round)."""
    message = op.get("err") or "operation failed"
    if op.get("err_class") == PeerUnreachable.__name__:
        return PeerUnreachable(message)
    return error_for_status(int(op.get("err_code") or 500), message)


class AgentClient(Endpoints):
    """One agent's API: the transport here, a method per endpoint in :class:`~orchapi.endpoints.Endpoints`."""

    def __init__(
        self,
        url: str,
        fingerprint: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.fingerprint = fingerprint
        self.client_cert = client_cert
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies, no REQUESTS_CA_BUNDLE: the pin is the only trust
        self.session.verify = False
        if url.startswith("unix://"):
            self._base = "http://orch-agent"
            self.session.mount("http://orch-agent", UnixSocketAdapter(url[len("unix://") :]))
        elif url.startswith("https://"):
            if not fingerprint:
                raise ValueError("an https remote needs a pinned certificate fingerprint")
            self._base = self.url
            ctx = (
                tlsconfig.client_context(*client_cert)
                if client_cert
                else tlsconfig.client_context(None, None)
            )
            self.session.mount(self.url, PinnedHTTPSAdapter(fingerprint, ctx))
        else:
            raise ValueError(f"unsupported agent URL {url!r}")

    def close(self) -> None:
        self.session.close()

    # -- raw requests --------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request; raise an :class:`OrchError` for transport failures and error envelopes."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self._base + path, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise self._ssl_error(exc) from None
        except requests.exceptions.Timeout as exc:
            raise Unavailable(f"the agent at {self.url} did not answer in time: {exc}") from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            if "Fingerprints did not match" in text:
                raise self._ssl_error(exc) from None
            if (
                any(alert in text.lower() for alert in _CLIENT_CERT_REJECTED)
                or self._rejects_our_certificate()
            ):
                raise self._rejected() from None
            raise _unreachable(self.url, _root_cause(exc)) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _ssl_error(self, exc: Exception) -> OrchError:
        text = str(exc)
        if "Fingerprints did not match" in text:
            try:
                actual = certs.fingerprint_pem(fetch_server_certificate(self.url))
            except OrchError:
                actual = None
            return CertificateMismatch(self.url, self.fingerprint or "", actual)
        if any(alert in text.lower() for alert in _CLIENT_CERT_REJECTED):
            return self._rejected()
        return Unavailable(f"TLS with {self.url} failed: {_root_cause(exc)}")

    def _rejects_our_certificate(self) -> bool:
        """Whether the agent is up but drops connections that present our certificate.

        With TLS 1.3 a server refuses an unknown client certificate *after* the client considers the
        handshake done, so the client sees a dropped connection rather than a clear alert. If an
        anonymous request to the same agent succeeds, the certificate was the problem.
        """
        if not self.client_cert or not self.url.startswith("https://"):
            return False
        probe = AgentClient(self.url, fingerprint=self.fingerprint, timeout=min(self.timeout, 10.0))
        try:
            probe.get("/1.0")
            return True
        except OrchError:
            return False
        finally:
            probe.close()

    def _rejected(self) -> Forbidden:
        return Forbidden(
            f"the agent at {self.url} does not trust this client's certificate",
            "remove the remote and add it again with the trust password",
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose answer is a sync envelope: returns its metadata."""
        return self.request(method, path, **kwargs).json().get("metadata")

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    # -- operations ----------------------------------------------------------------------------------
    def run(
        self,
        method: str,
        path: str,
        progress: Callable[[dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send a request that starts an operation and wait for it; returns the operation's metadata."""
        body = self.request(method, path, **kwargs).json()
        if body.get("type") != "async":
            return body.get("metadata") or {}
        return self.wait(body["operation"], progress)

    def wait(
        self, operation: str, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Wait for an operation to end; raise its error if it failed."""
        poll = 1.0 if progress else 30.0
        while True:
            op = self.call("GET", f"{operation}/wait", params={"timeout": poll}, timeout=poll + self.timeout)
            if progress:
                progress(op.get("metadata") or {})
            if op["status"] != "Running":
                break
        if op["status"] != "Success":
            raise operation_error(op)
        return op.get("metadata") or {}


def _error_from(response: requests.Response) -> OrchError:
    try:
        body = response.json()
        message = body.get("error") or response.reason
    except ValueError:
        message = f"{response.status_code} {response.reason}"
    return error_for_status(response.status_code, message)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause (urllib3 wraps socket errors several levels deep)."""
    seen = set()
    while True:
        inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen or not isinstance(inner, BaseException):
            break
        seen.add(id(inner))
        exc = inner
    return exc


def wait_for_agent(client: AgentClient, timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``GET /1.0`` until the agent answers (used right after starting one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get("/1.0")
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
