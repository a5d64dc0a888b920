"""Pulling a container from a source agent (``POST /1.0/containers`` with a migration source).

The session reads the source's header and decides, before any byte moves, what this host accepts
(hostagent/migration/policy.py: privilege, config, devices, the id map), what it can honour (the runtime's
``import_config``) and whether it has the room; then it negotiates the method, receives every volume into
a staging dir nobody else can reach (hostagent/migration/target/volumes.py), and only then commits. Any
failure (source error, disconnect, refusal, mismatch, no space, cancellation) kills the child processes
and removes the staging dir, leaving no partial container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hostagent.datalink import client as datalink_client
from hostagent.datalink import ktls
from hostagent.migration import policy
from hostagent.migration.messages import Accept, Header
from hostagent.migration.protocol import HEARTBEAT, Channel
from hostagent.migration.target import resume
from hostagent.migration.target.connect import (
    CONNECT_TIMEOUT,
    check_peer,
    client,
    client_context,
    connect_error,
)
from hostagent.migration.target.request import PullSpec
from hostagent.migration.target.volumes import VolumeReceiver
from hostagent.operations import Operation, outlast_cancels
from hostagent.transfer import compression
from hostagent.transfer.base import TransferMethod
from hostagent.transfer.features import probe_features
from hostagent.transfer.ratelimit import Throttle
from hostagent.transfer.registry import get_method, negotiate, usable_between
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, PeerUnreachable, Unavailable
from orchapi.modes import MAX_MESSAGE

log = logging.getLogger(__name__)

#: the operation metadata is refreshed this often while bytes move
TICK = 0.25


async def pull_container(agent: Any, op: Operation, name: str, spec: PullSpec) -> dict[str, Any]:
    async with agent.container_lock(name):
        await agent.blocking(agent.runtime.import_check, name, spec.refresh)
        async with client(agent, spec.source) as session:
            try:
                ws = await asyncio.wait_for(
                    session.ws_connect(
                        spec.source.url + "/fs",
                        headers={"Authorization": f"Bearer {spec.source.token}"},
                        max_msg_size=MAX_MESSAGE,
                        heartbeat=HEARTBEAT,
                        compress=0,
                    ),
                    CONNECT_TIMEOUT,
                )
            except TimeoutError:
                raise PeerUnreachable(
                    f"the source agent at {spec.source.where} did not answer in time"
                ) from None
            except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
                raise connect_error(spec.source, exc) from None
            return await converse(agent, op, name, spec, ws)


async def converse(agent: Any, op: Operation, name: str, spec: PullSpec, ws: Any) -> dict[str, Any]:
    """Receive the container over ``ws``, whoever dialed (pull: we did; push: the peer did); the peer is
    told why if it fails, and the connection torn down."""
    ch = Channel(ws, "source")
    ch.recv_throttle = Throttle(agent.bandwidth)  # this agent's total for what it receives
    try:
        check_peer(ws.get_extra_info, spec.source.fingerprint)
        return await TargetSession(agent, op, name, spec, ch).run()
    except BaseException as exc:
        reported = ch.explain(exc)
        await ch.send_error(reported)
        ch.abort()
        if reported is exc:
            raise
        raise reported from exc
    finally:
        await ch.close()


class TargetSession:
    """One container pull; the :class:`~hostagent.transfer.sides.TargetSide` the negotiated method
    receives through."""

    def __init__(self, agent: Any, op: Operation, name: str, spec: PullSpec, ch: Channel) -> None:
        self.agent, self.op, self.name, self.spec, self.ch = agent, op, name, spec, ch
        self.channel = ch
        self.refresh = spec.refresh
        self.source_where = spec.source.where
        self.source_host = urlsplit(spec.source.url).hostname
        #: bytes moved by something other than the channel (LXD, for lxd-migration), counted with its own
        self.external_bytes = 0
        # set once the header is admitted (see _run)
        self.header: Header | None = None
        self.data: dict[str, Any] = {}
        self.declared_size = 0
        self.privileged = False
        self._existing: dict[str, Any] | None = None
        #: set once the received container is committed (its staging dir is gone then)
        self._committed = self._committing = False

    def _bytes(self) -> None:
        self.op.progress(
            bytes_received=self.ch.bytes_received + self.external_bytes, bytes_sent=self.ch.bytes_sent
        )

    def progress(self, **fields: Any) -> None:
        self.op.progress(**fields)

    def stage(self, stage: str, **fields: Any) -> None:
        self.op.progress(stage=stage, **fields)
        self._bytes()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._bytes()

    async def run(self) -> dict[str, Any]:
        ticker = asyncio.ensure_future(self._tick())
        try:
            return await self._run()
        finally:
            ticker.cancel()
            self._bytes()

    async def _admit(self, header: Header) -> tuple[dict[str, str], bool]:
        """What this host accepts of the header (policy first, then what the runtime can honour)."""
        agent = self.agent
        grants = policy.Grants.for_job(self.spec.allow_privileged, agent.trust.server_config())
        privileged = policy.check_request(
            header.container.get("config") or {}, header.instance, header.idmap, grants
        )
        if privileged:
            log.warning("accepting privileged container %s (allowed by %s)", self.name, grants.source)
        config = await agent.blocking(agent.runtime.import_config, header.container, header.instance)
        return config, privileged

    async def _run(self) -> dict[str, Any]:
        agent, ch = self.agent, self.ch
        header = self.header = Header.from_message(await ch.recv(Header.TYPE))
        config, self.privileged = await self._admit(header)
        existing = self._existing = await agent.blocking(
            agent.runtime.import_check, self.name, self.spec.refresh
        )
        usable = usable_between(agent.transfer_methods, layouts_alike=header.layout == agent.runtime.layout)
        try:
            method_name = negotiate(header.methods, usable, existing is not None, self.spec.method)
        except Conflict as exc:
            if header.methods_reason:  # the source said why it offers so few: that is the real cause
                raise Conflict(f"{exc.message}: {header.methods_reason}", exc.hint) from None
            raise
        self.data = {
            **header.container,
            "config": config,
            "snapshots": header.snapshots,
            "instance": header.instance,
        }
        self.declared_size = header.size
        return await get_method(method_name).receive_container(self)

    def check_received(self, snapshot: str | None, received: Any) -> None:
        """The host's policy for a volume a non-streaming method brought (its manifest), as declared."""
        assert self.header is not None
        idmap = policy.volume_idmap(self.header.idmap, self.privileged)
        declared = {v[0]: policy.VolumeRules(idmap, v[1], v[2]) for v in self.header.volumes}
        what = "rootfs" if snapshot is None else f"snapshot {snapshot}"
        policy.check_received(received, declared[snapshot], what)

    async def receive_volumes(self, method: TransferMethod) -> dict[str, Any]:
        """Receive every volume through ``method`` into a staging dir, then commit (the streaming methods'
        way; see :meth:`~hostagent.transfer.base.TransferMethod.receive_container`). A staging dir an
        earlier attempt left suspended is resumed (hostagent/migration/target/resume.py)."""
        agent, header, existing = self.agent, self.header, self._existing
        assert header is not None
        method_name = method.name
        have = {s["name"] for s in existing.get("snapshots", [])} if existing else set()
        skip = [s["name"] for s in header.snapshots if s["name"] in have]
        todo = [v for v in header.volumes if v[0] is None or v[0] not in skip]
        plan = await agent.blocking_to_end(
            resume.open_staging,
            agent,
            self.name,
            self.spec,
            header,
            method,
            [v[0] for v in todo],
            self.privileged,
        )
        resumed = set(plan.resumed)
        try:
            todo = [v for v in todo if v[0] is None or v[0] not in resumed]
            needed = sum(v[1] for v in todo)
            free = agent.storage.free_bytes()
            self.op.progress(
                method=method_name,
                total_bytes=needed,
                total_exact=method.sends_whole_volumes and not skip and not resumed,
                volume=0,
                volumes=len(todo),
                resumed_volumes=plan.resumed,
                skipped_bytes=plan.skipped_bytes,
            )
            if needed > free:
                raise InsufficientStorage(
                    f"no space left on the target for container {self.name}: "
                    f"it needs {needed} bytes, {free} are free"
                )
            return await self._receive_into(method, plan, skip, todo, needed)
        except InsufficientStorage as exc:
            await self._settle(plan, exc)
            if str(exc).startswith("no space left on the target"):
                raise
            raise InsufficientStorage(f"no space left on the target: {exc}") from None
        except Exception as exc:
            if await self._settle(plan, exc):
                # whatever the cut made a child say, the transfer is interrupted, not refused: the
                # worker retries it (503), and the retry resumes
                raise Unavailable(
                    f"the transfer was interrupted ({exc}); what was verified is kept to resume it"
                ) from exc
            raise
        except BaseException as exc:  # cancelled: by a client (removed), or the agent stopping (kept)
            await self._settle(plan, exc)
            raise

    async def _settle(self, plan: resume.Resumption, exc: BaseException) -> bool:
        """A failed pull's staging dir: suspended for a later attempt, or removed (unless committed);
        whether it was suspended."""
        if self._committed:
            return False
        # a commit that failed may have moved volumes already: its staging dir is nothing to resume
        keep = not self._committing and resume.resumable(exc, self.ch, self.op)
        settling = asyncio.ensure_future(self.agent.blocking(resume.settle, self.agent.runtime, plan, keep))
        # to its end, even if cancelled (again) meanwhile: the operation must not be seen to end while
        # its staging dir is still being removed or moved aside
        await outlast_cancels(settling)
        try:
            suspended = bool(settling.result())
        except Exception as failed:  # noqa: BLE001 - the pull's own error is the one to report
            log.warning("could not settle the staging of %s: %s", self.name, failed)
            suspended = False
        self.op.progress(suspended=suspended)
        return suspended

    async def _receive_into(
        self,
        method: TransferMethod,
        plan: resume.Resumption,
        skip: list[str],
        todo: list[Any],
        needed: int,
    ) -> dict[str, Any]:
        agent, ch, header, data = self.agent, self.ch, self.header, self.data
        assert header is not None
        method_name, privileged, staging = method.name, self.privileged, plan.staging
        features = probe_features(agent.data_dir) & header.features
        limited = header.limited or (ch.recv_throttle is not None and ch.recv_throttle.limited())
        compress = compression.choose(self.spec.compression, features, limited) if method.streams else ""
        self.op.progress(compression=compress or "none")
        dial = self._dialer(header)
        receiver = VolumeReceiver(self, header, staging, method, features, privileged, dial, compress)
        receiver.resume(plan)
        # devices: whether the source may send device nodes at all (rsync -D): only privileged ones
        accept = Accept(method_name, skip + plan.resumed, features, privileged, dial is not None, compress)
        await ch.send_message(accept)
        files = await receiver.receive_all(skip + plan.resumed, len(todo))
        self.stage("commit")
        self._committing = True
        committing = agent.blocking(agent.runtime.import_commit, staging, data, header.idmap)
        commit = asyncio.ensure_future(committing)
        try:
            record = await asyncio.shield(commit)
        except asyncio.CancelledError:
            # past the point of no return: the commit (a thread) runs to its end and its outcome is
            # reported, so a cancelled job's rollback sees the container it must delete; removing
            # the staging dir under a running commit could leave half a container
            record = await commit
        self._committed = True
        with contextlib.suppress(Exception):
            await ch.send("done")
        log.info(
            "received container %s from %s by %s: %d bytes in, %d out%s",
            self.name,
            self.spec.source.where,
            method_name,
            ch.bytes_received,
            ch.bytes_sent,
            f" (resumed: {len(plan.resumed)} volume(s) kept)" if plan.resumed else "",
        )
        result = {
            "stage": "done",
            "method": method_name,
            "container": record.to_api(),
            "verified": True,
            "files": files,
            "bytes_received": ch.bytes_received,
            "bytes_sent": ch.bytes_sent,
            # how the bytes went: a data link per volume (and repair pass), or the websocket
            "data_links": ch.links_used,
            "total_bytes": needed,
            "volume": len(todo),
            "volumes": len(todo),
            # what each volume received cost on the wire, and what an earlier attempt spared this one
            "received_volumes": receiver.received_volumes,
            "resumed_volumes": plan.resumed,
            "skipped_bytes": plan.skipped_bytes,
        }
        # what a limit and compression did: wire bytes are bytes_received; payload_bytes what they
        # were once decompressed (not measured when rsync decompresses inside itself)
        result["compression"] = compress or "none"
        if not (compress and method_name == "rsync"):
            result["payload_bytes"] = receiver.payload_bytes
        waited = ch.recv_throttle.throttled if ch.recv_throttle is not None else 0.0
        result["throttled_seconds"] = round(waited + receiver.source_throttled, 1)
        if receiver.repaired:
            result["repaired"] = receiver.repaired
        return result

    def _dialer(self, header: Header) -> Any:
        """How this session dials the source's data-link offers (None: keep the bytes on the websocket):
        to the source's data port on the host its agent was reached at, with the migration's own TLS
        context (our certificate, the source's pinned)."""
        if header.link_port is None or not self.agent.use_datalinks or self.spec.pushed:
            return None  # pushed: this agent may have no way to the peer (that is why it pushes)
        agent, ref, port = self.agent, self.spec.source, header.link_port
        host = urlsplit(ref.url).hostname or ""
        ctx = ktls.enable(client_context(agent, ref.certificate))

        async def dial(offer: dict[str, Any]) -> Any:
            token = offer.get("token")
            if not isinstance(token, str) or not 0 < len(token) <= 128:
                raise BadRequest("migration protocol error: invalid data link offer")
            return await agent.blocking(datalink_client.dial, host, port, token, ctx, ref.fingerprint)

        return dial
