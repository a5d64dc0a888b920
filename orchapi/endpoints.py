"""One client method per agent endpoint, built on the shared types of :mod:`orchapi.api`, so callers
never spell a ``/1.0/…`` path or a request body themselves. A mixin of
:class:`~orchapi.client.AgentClient`, which gives the transport (``call``, ``run``, ``get``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from orchapi.api.containers import ContainerFromImage, Rename, StateChange
from orchapi.api.migration import MigrationIssued, MigrationRequest
from orchapi.api.receive import ImageFromMigration, PushRequest, ReceiveSource
from orchapi.api.server import ServerInfo


def _p(name: str, safe: str = "") -> str:
    """A path segment (names are checked on both sides; quoting only keeps a stray one a segment)."""
    return quote(name, safe=safe)


class Endpoints:
    """The endpoints; the methods that wait for an operation return its metadata."""

    # the transport: the client's own (orchapi/client.py)
    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def run(self, method: str, path: str, progress: Any = None, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    # -- the server ----------------------------------------------------------------------------------
    def server(self) -> ServerInfo:
        """``GET /1.0``."""
        return ServerInfo.from_json(self.call("GET", "/1.0"))

    def set_server_config(self, config: dict[str, Any]) -> None:
        """``PATCH /1.0``: merge ``config`` into the server config."""
        self.call("PATCH", "/1.0", json={"config": config})

    # -- containers ----------------------------------------------------------------------------------
    def containers(self) -> list[dict[str, Any]]:
        """``GET /1.0/containers?recursion=1``: every container, in full."""
        return self.call("GET", "/1.0/containers", params={"recursion": 1})

    def container_names(self) -> list[str]:
        """``GET /1.0/containers``: the names (the agent lists their URLs)."""
        return [str(url).rsplit("/", 1)[-1] for url in self.call("GET", "/1.0/containers") or []]

    def container(self, name: str) -> dict[str, Any]:
        """``GET /1.0/containers/<name>``."""
        return self.call("GET", f"/1.0/containers/{_p(name)}")

    def container_state(self, name: str) -> dict[str, Any]:
        """``GET /1.0/containers/<name>/state``."""
        return self.call("GET", f"/1.0/containers/{_p(name)}/state")

    def snapshot(self, name: str, snapshot: str) -> dict[str, Any]:
        """``GET /1.0/containers/<name>/snapshots/<snapshot>``."""
        return self.call("GET", f"/1.0/containers/{_p(name)}/snapshots/{_p(snapshot)}")

    def change_state(self, name: str, change: StateChange, **kwargs: Any) -> dict[str, Any]:
        """``PUT /1.0/containers/<name>/state``, waited for (``timeout=`` of the request itself)."""
        return self.run("PUT", f"/1.0/containers/{_p(name)}/state", json=change.to_json(), **kwargs)

    def create_container(self, request: ContainerFromImage) -> dict[str, Any]:
        """``POST /1.0/containers`` from a local image, waited for."""
        return self.run("POST", "/1.0/containers", json=request.to_json())

    def set_container_config(self, name: str, config: dict[str, str], replace: bool = False) -> None:
        """``PATCH /1.0/containers/<name>`` (merge) or, with ``replace``, ``PUT`` (the whole config)."""
        self.run("PUT" if replace else "PATCH", f"/1.0/containers/{_p(name)}", json={"config": config})

    def snapshots(self, name: str) -> list[dict[str, Any]]:
        """``GET /1.0/containers/<name>/snapshots?recursion=1``."""
        return self.call("GET", f"/1.0/containers/{_p(name)}/snapshots", params={"recursion": 1})

    def create_snapshot(self, name: str, snapshot: str) -> dict[str, Any]:
        """``POST /1.0/containers/<name>/snapshots``, waited for."""
        return self.run("POST", f"/1.0/containers/{_p(name)}/snapshots", json={"name": snapshot})

    def restore_snapshot(self, name: str, snapshot: str) -> dict[str, Any]:
        """``PUT /1.0/containers/<name>`` with ``restore``, waited for."""
        return self.run("PUT", f"/1.0/containers/{_p(name)}", json={"restore": snapshot})

    def delete_snapshot(self, name: str, snapshot: str) -> dict[str, Any]:
        """``DELETE /1.0/containers/<name>/snapshots/<snapshot>``, waited for."""
        return self.run("DELETE", f"/1.0/containers/{_p(name)}/snapshots/{_p(snapshot)}")

    def rename_container(self, name: str, new_name: str) -> dict[str, Any]:
        """``POST /1.0/containers/<name>``, waited for."""
        return self.run("POST", f"/1.0/containers/{_p(name)}", json=Rename(new_name).to_json())

    def delete_container(self, name: str) -> dict[str, Any]:
        """``DELETE /1.0/containers/<name>``, waited for."""
        return self.run("DELETE", f"/1.0/containers/{_p(name)}")

    # -- images -------------------------------------------------------------------------------------
    def images(self) -> list[dict[str, Any]]:
        """``GET /1.0/images?recursion=1``."""
        return self.call("GET", "/1.0/images", params={"recursion": 1})

    def image(self, ref: str) -> dict[str, Any]:
        """``GET /1.0/images/<fingerprint or alias>``."""
        return self.call("GET", f"/1.0/images/{_p(ref, '/')}")

    def upload_image(self, data: Any, aliases: list[str], **kwargs: Any) -> dict[str, Any]:
        """``POST /1.0/images`` of a tarball (``data``: bytes or a file-like reader), waited for."""
        headers = {"Content-Type": "application/octet-stream"}
        params = [("alias", a) for a in aliases] or None
        return self.run("POST", "/1.0/images", params=params, data=data, headers=headers, **kwargs)

    def export_image(self, fingerprint: str, **kwargs: Any) -> Any:
        """``GET /1.0/images/<fingerprint>/export``: the streamed response (the tarball)."""
        return self.request("GET", f"/1.0/images/{_p(fingerprint)}/export", stream=True, **kwargs)

    def delete_image(self, ref: str) -> dict[str, Any]:
        """``DELETE /1.0/images/<fingerprint or alias>``, waited for."""
        return self.run("DELETE", f"/1.0/images/{_p(ref, '/')}")

    def aliases(self) -> list[dict[str, Any]]:
        """``GET /1.0/images/aliases?recursion=1``."""
        return self.call("GET", "/1.0/images/aliases", params={"recursion": 1})

    def create_alias(self, name: str, fingerprint: str) -> None:
        """``POST /1.0/images/aliases``."""
        self.call("POST", "/1.0/images/aliases", json={"name": name, "target": fingerprint})

    def delete_alias(self, name: str) -> None:
        """``DELETE /1.0/images/aliases/<name>``."""
        self.call("DELETE", f"/1.0/images/aliases/{_p(name, '/')}")

    def discard_suspended_import(self, name: str) -> None:
        """``DELETE /1.0/suspended-imports/<name>``: what an interrupted transfer of ``name`` kept."""
        self.call("DELETE", f"/1.0/suspended-imports/{_p(name)}")

    # -- trust ----------------------------------------------------------------------------------------
    def enrol(self, certificate: str, password: str, name: str) -> None:
        """``POST /1.0/certificates``: add this client's ``certificate`` to the agent's trust store
        with the trust password (an anonymous client's one request)."""
        body = {"type": "client", "certificate": certificate, "password": password, "name": name}
        self.call("POST", "/1.0/certificates", json=body)

    # -- operations (their paths are the agent's answers: ``/1.0/operations/<id>``) -------------------
    def operation_wait(self, operation: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        """``GET <operation>/wait?timeout=…``: the operation once it ended or ``timeout`` passed."""
        return self.call("GET", f"{operation}/wait", params={"timeout": timeout}, **kwargs)

    def cancel_operation(self, operation: str, resumable: bool = False) -> None:
        """``DELETE <operation>``; ``resumable``: a transfer keeps what it verified, to be resumed."""
        self.call("DELETE", operation, params={"resumable": 1} if resumable else None)

    # -- receiving (target side) ---------------------------------------------------------------------
    def receive_container(self, name: str, source: ReceiveSource) -> dict[str, Any]:
        """``POST /1.0/containers`` from a migration: the operation's envelope (``operation``, and for
        a push sink its id and secret in ``metadata.metadata``), not waited for."""
        return self.request("POST", "/1.0/containers", json={"name": name, "source": source.to_json()}).json()

    def pull_image(self, request: ImageFromMigration) -> dict[str, Any]:
        """``POST /1.0/images`` from a migration, waited for (``cached`` if it had the image)."""
        return self.run("POST", "/1.0/images", json=request.to_json())

    # -- migrations (source side) --------------------------------------------------------------------
    def create_migration(self, name: str, request: MigrationRequest) -> MigrationIssued:
        """``POST /1.0/containers/<name>/migration``: one-time secrets for the target."""
        return MigrationIssued.from_json(
            self.call("POST", f"/1.0/containers/{_p(name)}/migration", json=request.to_json())
        )

    def push_migration(self, migration_id: str, request: PushRequest) -> str:
        """``POST /1.0/migrations/<id>/push``: the source dials the target's sink; its operation."""
        path = f"/1.0/migrations/{_p(migration_id)}/push"
        return self.request("POST", path, json=request.to_json()).json()["operation"]

    def revoke_migration(self, migration_id: str) -> None:
        """``DELETE /1.0/migrations/<id>`` (idempotent on the agent)."""
        self.call("DELETE", f"/1.0/migrations/{_p(migration_id)}")
