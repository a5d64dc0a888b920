"""Many simulated agents in one asyncio process: just enough of the agent's ``/1.0`` API for the chain.

Why: ``bench/scale`` measures the orchestrator alone (Redis, Celery, the workers, the job records), so
the agents must cost next to nothing and finish every transfer at once. Real agents would spend the
2-core machine on runc, rsync and manifests and hide what the control plane costs.

Each simulated host has its own HTTPS port and its own self-signed P-384 certificate
(:func:`orchapi.certs.generate`, served with :func:`orchapi.tlsconfig.server_context`), because the
orchestrator knows hosts by certificate fingerprint (orchestrator/hostid.py) and pins them. The one
client certificate of the benchmark is the only one trusted (mutual TLS, as a real agent would ask).

State is in memory and shared by all hosts: which containers exist where, the migrations a source
issued (their one-time ``fs`` secret is checked and spent by the target's pull), the operations. What
the chain asks, and what the real handlers in hostagent/api/ answer:

- ``GET /1.0``: identity, ``auth: trusted``, transfer methods, free space, addresses, ``config``
- ``GET /1.0/containers/<name>``: the record (Stopped) or a 404 error envelope
- ``POST /1.0/containers/<name>/migration``: 201, secrets ``image``/``fs``, certificate, base image
- ``POST /1.0/images`` (JSON, a migration source): sync ``cached: true`` (the target has the image)
- ``POST /1.0/containers`` (a pull): the container appears on the target at once; 202 + an operation
  that is already ``Success`` with ``verified: true``
- ``GET /1.0/operations/<id>[/wait]``, ``DELETE /1.0/operations/<id>``, ``DELETE /1.0/migrations/<id>``
- ``DELETE /1.0/containers/<name>``: gone at once; 202 + a ``Success`` operation

A plain-HTTP control port (127.0.0.1 only) lets the harness seed containers and read counters:
``POST /seed {"host": [names]}``, ``GET /stats`` (calls per route, deletes, unexpected calls).

    python -m bench.simagent --dir DIR --hosts 10 --client-cert client.crt   # writes DIR/ready.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from orchapi import certs, tlsconfig

#: the base image every simulated container was made from (the target "has" it: nothing to pull)
BASE_IMAGE = hashlib.sha256(b"bench-scale-base-image").hexdigest()
METHODS = ["rsync", "tar"]
#: what a simulated transfer reports having moved (a small stopped container's delta)
MOVED_BYTES, MOVED_FILES = 96 * 1024, 412
FREE_BYTES = 1 << 44


@dataclass
class Host:
    """One simulated agent."""

    name: str
    cert_pem: str
    fingerprint: str
    port: int = 0
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    migrations: dict[str, dict[str, Any]] = field(default_factory=dict)


class Sim:
    """All hosts, their shared counters, and the handlers (one aiohttp app per host)."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.by_port: dict[int, Host] = {}
        self.calls: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.deletes = 0

    # -- envelopes ------------------------------------------------------------------------------------
    @staticmethod
    def sync(metadata: Any, status: int = 200) -> web.Response:
        body = {"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}
        return web.json_response(body, status=status)

    @staticmethod
    def error(message: str, status: int) -> web.Response:
        return web.json_response({"type": "error", "error": message, "error_code": status}, status=status)

    @staticmethod
    def operation(host: Host, description: str, metadata: dict[str, Any]) -> web.Response:
        """An operation that has already succeeded (the simulated work is instant), as 202 + its URL."""
        op_id = str(uuid.uuid4())
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        op = {
            "id": op_id,
            "class": "task",
            "description": description,
            "created_at": now,
            "updated_at": now,
            "status": "Success",
            "status_code": 200,
            "resources": {},
            "metadata": metadata,
            "may_cancel": False,
            "err": "",
            "err_code": 0,
            "err_class": "",
        }
        host.operations[op_id] = op
        url = f"/1.0/operations/{op_id}"
        body = {
            "type": "async",
            "status": "Operation created",
            "status_code": 100,
            "operation": url,
            "metadata": op,
        }
        return web.json_response(body, status=202, headers={"Location": url})

    # -- the app of one host ---------------------------------------------------------------------------
    def app(self, host: Host) -> web.Application:
        app = web.Application(middlewares=[self._count])
        app["host"] = host
        r = app.router
        r.add_get("/1.0", self.server_info)
        r.add_get("/1.0/containers", self.list_containers)
        r.add_post("/1.0/containers", self.create_container)
        r.add_get("/1.0/containers/{name}", self.get_container)
        r.add_delete("/1.0/containers/{name}", self.delete_container)
        r.add_put("/1.0/containers/{name}/state", self.put_state)
        r.add_post("/1.0/containers/{name}/migration", self.create_migration)
        r.add_delete("/1.0/migrations/{id}", self.delete_migration)
        r.add_post("/1.0/images", self.import_image)
        r.add_get("/1.0/images/{ref}", self.get_image)
        r.add_get("/1.0/operations/{id}", self.get_operation)
        r.add_get("/1.0/operations/{id}/wait", self.get_operation)
        r.add_delete("/1.0/operations/{id}", self.get_operation)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None:  # a call the chain was not expected to make: counted, then a 404
            self.unexpected[f"{request.method} {request.path}"] += 1
            return self.error(f"not simulated: {request.method} {request.path}", 404)
        self.calls[f"{request.method} {resource.canonical}"] += 1
        return await handler(request)

    async def server_info(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        trusted = bool(ssl_object and ssl_object.getpeercert(binary_form=True))
        env: dict[str, Any] = {
            "certificate": host.cert_pem,
            "certificate_fingerprint": host.fingerprint,
            "server": "orch-agent",
            "server_name": host.name,
            "server_version": "sim",
        }
        if trusted:
            env.update(
                runtime="native",
                storage="dir",
                transfer_methods=METHODS,
                storage_free=FREE_BYTES,
                storage_total=FREE_BYTES,
                addresses=[f"127.0.0.1:{host.port}"],
                data_link={"port": None, "kernel_tls": False},
            )
        return self.sync(
            {
                "api_version": "1.0",
                "api_extensions": [],
                "auth": "trusted" if trusted else "untrusted",
                "auth_methods": ["tls"],
                "public": False,
                "environment": env,
                "config": {},
            }
        )

    async def list_containers(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        return self.sync([f"/1.0/containers/{n}" for n in host.containers])

    async def get_container(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        name = request.match_info["name"]
        record = host.containers.get(name)
        if record is None:
            return self.error(f"container {name} not found", 404)
        return self.sync(record)

    async def put_state(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        name = request.match_info["name"]
        record = host.containers.get(name)
        if record is None:
            return self.error(f"container {name} not found", 404)
        action = (await request.json()).get("action")
        record["status"] = "Running" if action in ("start", "restart") else "Stopped"
        record["status_code"] = 103 if record["status"] == "Running" else 102
        return self.operation(host, f"{action} container {name}", {})

    async def create_migration(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        name = request.match_info["name"]
        record = host.containers.get(name)
        if record is None:
            return self.error(f"container {name} not found", 404)
        body = await request.json()
        if not isinstance(body.get("target_certificate"), str):
            return self.error("target_certificate must be the target agent's PEM certificate", 400)
        tokens = {"image": secrets.token_hex(32), "fs": secrets.token_hex(32)}
        mig_id = uuid.uuid4().hex
        host.migrations[mig_id] = {"container": name, "fs": tokens["fs"], "spent": False}
        return self.sync(
            {
                "id": mig_id,
                "secrets": tokens,
                "expires_at": time.time() + 120,
                "certificate": host.cert_pem,
                "container": record,
                "snapshots": [],
                "base_image": BASE_IMAGE,
                "base_image_available": True,
                "methods": METHODS,
                "size": MOVED_BYTES,
            },
            status=201,
        )

    async def delete_migration(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        host.migrations.pop(request.match_info["id"], None)
        return self.sync({})

    async def import_image(self, request: web.Request) -> web.Response:
        body = await request.json()
        fingerprint = ((body.get("source") or {}).get("fingerprint")) or ""
        if fingerprint != BASE_IMAGE:
            return self.error(f"image {fingerprint} not found on the source", 404)
        return self.sync({"fingerprint": fingerprint, "cached": True})

    async def get_image(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if ref != BASE_IMAGE:
            return self.error(f"image {ref} not found", 404)
        return self.sync({"fingerprint": ref, "aliases": [], "size": 1 << 20})

    async def create_container(self, request: web.Request) -> web.Response:
        """A pull from another simulated host: spend its migration's secret, copy the record."""
        host: Host = request.app["host"]
        body = await request.json()
        name, source = body.get("name"), body.get("source") or {}
        if source.get("type") != "migration" or source.get("mode", "pull") != "pull":
            return self.error("the simulated agent only receives pulled migrations", 400)
        if name in host.containers:
            return self.error(f"container {name} already exists", 409)
        url = urlsplit(str(source.get("operation", "")))
        src = self.by_port.get(url.port or 0)
        migration = src.migrations.get(url.path.rsplit("/", 1)[-1]) if src else None
        secret = (source.get("secrets") or {}).get("fs")
        if src is None or migration is None or migration["spent"] or secret != migration["fs"]:
            return self.error("the source refused the migration secret", 403)
        migration["spent"] = True
        record = src.containers.get(migration["container"])
        if record is None:
            return self.error(f"container {migration['container']} not found on the source", 404)
        host.containers[name] = {**record, "name": name}
        meta = {
            "stage": "done",
            "method": METHODS[0],
            "container": host.containers[name],
            "verified": True,
            "files": MOVED_FILES,
            "bytes_received": MOVED_BYTES,
            "bytes_sent": 2048,
            "total_bytes": MOVED_BYTES,
            "volume": 1,
            "volumes": 1,
            "resumed_volumes": [],
            "skipped_bytes": 0,
            "compression": "none",
            "payload_bytes": MOVED_BYTES,
            "throttled_seconds": 0.0,
        }
        return self.operation(host, f"Receiving container {name}", meta)

    async def delete_container(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        name = request.match_info["name"]
        record = host.containers.pop(name, None)
        if record is None:
            return self.error(f"container {name} not found", 404)
        self.deletes += 1
        return self.operation(host, f"Deleting container {name}", {})

    async def get_operation(self, request: web.Request) -> web.Response:
        host: Host = request.app["host"]
        op = host.operations.get(request.match_info["id"])
        if op is None:
            return self.error("operation not found", 404)
        return self.sync(op)

    # -- the harness's control port -------------------------------------------------------------------
    def control(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/seed", self.seed)
        app.router.add_get("/stats", self.stats)
        return app

    async def seed(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for host_name, names in body.items():
            host = self.hosts[host_name]
            for name in names:
                host.containers[name] = {
                    "name": name,
                    "type": "container",
                    "status": "Stopped",
                    "status_code": 102,
                    "created_at": now,
                    "architecture": "x86_64",
                    "config": {"volatile.base_image": BASE_IMAGE},
                    "snapshots": [],
                    "ephemeral": False,
                    "stateful": False,
                }
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": dict(self.calls),
                "unexpected": dict(self.unexpected),
                "deletes": self.deletes,
                "containers": {n: len(h.containers) for n, h in self.hosts.items()},
            }
        )


async def serve(workdir: Path, count: int, client_cert: Path) -> None:
    """Start ``count`` hosts and the control port, write ``ready.json``, run until SIGTERM/SIGINT."""
    sim, runners = Sim(), []
    client_pem = client_cert.read_text()
    for i in range(count):
        name = f"h{i:02d}"
        crt, key = workdir / f"{name}.crt", workdir / f"{name}.key"
        certs.generate(crt, key, f"sim-{name}")
        pem = crt.read_text()
        host = Host(name, pem, certs.fingerprint_pem(pem))
        runner = web.AppRunner(sim.app(host), access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, "127.0.0.1", 0, ssl_context=tlsconfig.server_context(crt, key, [client_pem])
        )
        await site.start()
        host.port = runner.addresses[0][1]
        sim.hosts[name], sim.by_port[host.port] = host, host
        runners.append(runner)
    control = web.AppRunner(sim.control(), access_log=None)
    await control.setup()
    await web.TCPSite(control, "127.0.0.1", 0).start()
    runners.append(control)
    ready = {
        "control_port": control.addresses[0][1],
        "pid": os.getpid(),
        "hosts": [{"name": h.name, "port": h.port, "cert": h.cert_pem} for h in sim.hosts.values()],
    }
    tmp = workdir / "ready.json.tmp"
    tmp.write_text(json.dumps(ready))
    tmp.replace(workdir / "ready.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--client-cert", type=Path, required=True)
    args = p.parse_args()
    asyncio.run(serve(args.dir, args.hosts, args.client_cert))


if __name__ == "__main__":
    main()
