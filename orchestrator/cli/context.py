"""Shared CLI state: the client configuration, loaded once per invocation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestrator.clientconfig import ClientConfig

if TYPE_CHECKING:
    from orchestrator.connect import RemoteClient


class Context:
    """Carried in click's context object."""

    def __init__(self) -> None:
        self._config: ClientConfig | None = None

    @property
    def config(self) -> ClientConfig:
        if self._config is None:
            self._config = ClientConfig()
        return self._config

    def client(self, remote: str) -> RemoteClient:
        # imported here: requests and the TLS client cost ~40 ms, and `orch move` talks to no agent
        from orchestrator.connect import connect

        return connect(self.config, remote)


pass_ctx = click.make_pass_decorator(Context, ensure=True)
