"""Turning a configured remote into an :class:`~orchapi.client.AgentClient`."""

from __future__ import annotations

import re

from orchapi.client import AgentClient, CertificateMismatch
from orchapi.errors import OrchError
from orchestrator.clientconfig import ClientConfig


class ServerCertificateChanged(OrchError):
    """A remote's agent presents a different certificate than the one stored when it was added."""

    status = 495


def connect(config: ClientConfig, remote_name: str, timeout: float = 30.0) -> RemoteClient:
    """A client for ``remote_name``: its unix socket, or HTTPS pinned to its stored certificate."""
    remote = config.get(remote_name)
    if remote.is_unix:
        return RemoteClient(remote_name, "unix://" + remote.socket_path, timeout=timeout)
    return RemoteClient(
        remote_name,
        remote.addr,
        fingerprint=config.pinned_fingerprint(remote_name),
        client_cert=config.client_cert(),
        timeout=timeout,
    )


#: an agent names its containers without a remote ("container c1 not found", "orch start c1"): the
#: CLI adds the remote, or the hint would act on the default remote and the message be ambiguous
_CONTAINER = re.compile(r"^(container |snapshot )(?![\w.-]*:)([a-z0-9][\w.-]*)")
_COMMAND = re.compile(
    r"\b(orch (?:start|stop|restart|delete|info|exec|snapshot) (?:-f )?)(?![\w.-]*:)([a-z0-9][\w.-]*)"
)


def name_remote(exc: OrchError, remote: str) -> OrchError:
    """``exc`` with the remote put before the container names an agent's message and hint use."""
    message = _COMMAND.sub(rf"\g<1>{remote}:\g<2>", _CONTAINER.sub(rf"\g<1>{remote}:\g<2>", exc.message))
    hint = _COMMAND.sub(rf"\g<1>{remote}:\g<2>", exc.hint) if exc.hint else exc.hint
    if (message, hint) == (exc.message, exc.hint):
        return exc
    named = type(exc)(message, hint)
    named.__cause__ = exc.__cause__
    return named


class RemoteClient(AgentClient):
    """An :class:`AgentClient` that knows its remote's name, to name it in errors."""

    def __init__(self, remote: str, url: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.remote = remote
        super().__init__(url, **kwargs)

    def wait(self, operation, progress=None):  # type: ignore[no-untyped-def]
        try:
            return super().wait(operation, progress)
        except OrchError as exc:
            raise name_remote(exc, self.remote) from None

    def request(self, method, path, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return self._request(method, path, **kwargs)
        except OrchError as exc:
            raise name_remote(exc, self.remote) from None

    def _request(self, method, path, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().request(method, path, **kwargs)
        except CertificateMismatch as exc:
            raise ServerCertificateChanged(
                f"the certificate of remote {self.remote} changed: stored fingerprint {exc.expected}, "
                f"server now presents {exc.actual or 'an unknown certificate'}",
                f"if this change is expected, run `orch remote remove {self.remote}` and add it again",
            ) from None
