"""The agent object: wires the trust store, image store, runtime driver and operations together.

Endpoints reach everything through it. Runtime and image calls are blocking (they shell out to runc, cp,
btrfs...), so :meth:`Agent.blocking` runs them in a thread pool; :meth:`Agent.container_lock` serialises
state changes per container so that, say, a stop and a delete of one container never interleave.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import ssl
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hostagent.datalink import ktls
from hostagent.datalink.listener import DataListener
from hostagent.enrolment import BACKOFF_BASE, Enrolment, EnrolmentGuard
from hostagent.execsession.session import ExecSession
from hostagent.migration.sinks import SinkRegistry
from hostagent.migration.tokens import MigrationRegistry
from hostagent.operations import OperationRegistry, outlast_cancels
from hostagent.runtimes import RuntimeOptions, make_runtime
from hostagent.runtimes.base import Runtime
from hostagent.transfer.ratelimit import BWLIMIT_KEY, TokenBucket, configured_rate
from hostagent.transfer.registry import available_methods
from hostagent.trust import TrustStore
from orchapi import certs, tlsconfig

log = logging.getLogger(__name__)

T = TypeVar("T")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orch")
    except PackageNotFoundError:
        return "unknown"


#: the installed package's version (one number for agent and CLI: they ship together)
VERSION = _version()


class Agent:
    """Everything one ``orch-agent`` process serves."""

    def __init__(
        self,
        data_dir: Path,
        runtime: str = "native",
        name: str | None = None,
        options: RuntimeOptions | None = None,
        enrol_backoff: float = BACKOFF_BASE,
    ) -> None:
        self.data_dir = data_dir
        self.name = name or socket.gethostname()
        self.cert_path = data_dir / "server.crt"
        self.key_path = data_dir / "server.key"
        self.fingerprint = certs.ensure(self.cert_path, self.key_path, f"orch-agent@{self.name}")
        self.certificate = self.cert_path.read_text()
        self.ssl_context: ssl.SSLContext | None = None
        #: HTTPS addresses the agent listens on (host:port), reported to trusted callers
        self.addresses: list[str] = []
        self.trust = TrustStore(data_dir, on_added=self._trust_in_tls)
        #: who may try the trust password, and its scrypt thread (never the shared pool below)
        self.enrolment = Enrolment(self.trust.check_password, EnrolmentGuard(base=enrol_backoff))
        self.runtime: Runtime = make_runtime(runtime, data_dir, options)
        #: where container volumes live (the data dir, or LXD's pool) and the runtime's images
        self.storage = self.runtime.storage
        self.images = self.runtime.images
        self.operations = OperationRegistry()
        #: this agent's total bandwidth for migrations, each direction, shared by all that run at once
        #: (server config ``migration.bwlimit``; unlimited when unset)
        self.bandwidth = TokenBucket(configured_rate(self.trust.server_config().get(BWLIMIT_KEY, "")))
        #: streaming execs whose websockets are open or awaited, by operation id
        self.exec_sessions: dict[str, ExecSession] = {}
        #: migrations this agent issued as a source (in memory: a restart invalidates their tokens)
        self.migrations = MigrationRegistry()
        #: push sinks open on this agent (target side of push mode)
        self.sinks = SinkRegistry()
        #: the storage's transfer methods whose tools exist, restricted by ORCH_AGENT_TRANSFER_METHODS
        self.transfer_methods = available_methods(self.runtime.transfer_methods)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: the data port of the migrations this agent sends (None: their bytes go over the websocket)
        self.datalink: DataListener | None = None
        #: whether this agent, as a target, takes the data links sources offer
        self.use_datalinks = os.environ.get("ORCH_AGENT_DATA_LINK", "on") != "off"
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="agent-work")
        self._background: set[asyncio.Task[Any]] = set()

    def start_datalink(self, sock: socket.socket) -> None:
        self.datalink = DataListener(sock, self.cert_path, self.key_path).start()

    def stop_datalink(self) -> None:
        if self.datalink is not None:
            self.datalink.close()
            self.datalink = None

    def make_ssl_context(self) -> ssl.SSLContext:
        """The listener's TLS context, trusting the certificates in the store now."""
        self.ssl_context = tlsconfig.server_context(self.cert_path, self.key_path, self.trust.pems())
        return self.ssl_context

    def _trust_in_tls(self, pem: str) -> None:
        """A newly trusted certificate must pass the TLS handshake from the next connection on."""
        if self.ssl_context is not None:
            self.ssl_context.load_verify_locations(cadata=pem)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking driver call in the agent's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args))

    async def blocking_to_end(self, fn: Callable[..., T], *args: Any) -> T:
        """As :meth:`blocking`, but a cancel is raised only once the thread has finished: for work on
        files that the cleanup following a cancel removes (a thread cannot be stopped, and a removal
        racing it would leave what it writes meanwhile)."""
        future = asyncio.ensure_future(self.blocking(fn, *args))
        if await outlast_cancels(future):
            raise asyncio.CancelledError
        return future.result()

    def in_background(self, what: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the thread pool without anyone waiting for it (e.g. the removal of a deleted
        container's files). A failure is logged; work a crash interrupts is finished by the runtime's
        recovery at the next start."""

        def done(task: asyncio.Task[Any]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s failed: %s", what, task.exception())

        task = asyncio.get_running_loop().create_task(self.blocking(fn))
        self._background.add(task)  # a reference, or the task could be collected before it ran
        task.add_done_callback(done)

    def container_lock(self, name: str) -> asyncio.Lock:
        return self._locks[name]

    def server_info(self, trusted: bool) -> dict[str, Any]:
        """``GET /1.0``: identity for everyone, details for trusted callers."""
        environment: dict[str, Any] = {
            "certificate": self.certificate,
            "certificate_fingerprint": self.fingerprint,
            "server": "orch-agent",
            "server_name": self.name,
            "server_version": VERSION,
        }
        info: dict[str, Any] = {
            "api_version": "1.0",
            "api_extensions": [],
            "auth": "trusted" if trusted else "untrusted",
            "auth_methods": ["tls"],
            "public": False,
            "environment": environment,
            "config": {},
        }
        if trusted:
            environment.update(
                {
                    "runtime": self.runtime.name,
                    "storage": self.runtime.storage_name,
                    "transfer_methods": list(self.transfer_methods),
                    "kernel": platform.system(),
                    "kernel_version": platform.release(),
                    "architectures": [platform.machine()],
                    "storage_free": self.storage.free_bytes(),
                    "storage_total": self.storage.total_bytes(),
                    "addresses": list(self.addresses),
                    "data_link": {
                        "port": self.datalink.port if self.datalink else None,
                        "kernel_tls": ktls.available(),
                    },
                }
            )
            server = self.trust.server_config()
            info["config"] = {k: v for k, v in server.items() if k != "core.trust_password"}
            if self.trust.has_password():
                info["config"]["core.trust_password"] = True
        return info
