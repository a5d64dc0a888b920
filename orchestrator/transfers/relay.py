"""Relay mode: the worker dials both agents and carries the migration's frames between them.

For agents that cannot reach each other in either direction but that the worker reaches. The source
issues the migration to the worker's own client certificate and the target opens its sink for it, so
the secrets are good only on the worker's connections. The worker connects the source's
``/1.0/migrations/<id>/fs`` and the target's ``/1.0/sinks/<id>/fs`` with the same pinned mTLS as its
requests and pumps every frame across, each direction reading its next frame only once the previous one
was written to the other side (aiohttp's send waits for the socket to drain), so neither side is read
faster than the other drains and memory stays at a frame per direction. The conversation is the
agents' own: the worker reads none of it. The pump runs in a thread of its own while the step follows
the target's operation, which has the progress and the verdict; if the pump fails, the target's
operation is cancelled, and if that fails, the pump is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import aiohttp

from orchapi.errors import OrchError, Unavailable, error_for_status
from orchapi.modes import MAX_MESSAGE
from orchapi.wsclient import session_for
from orchestrator.clientconfig import ClientConfig
from orchestrator.connect import RemoteClient
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import source, target
from orchestrator.tasks.issue_token import reissue
from orchestrator.transfers.follow import POLL, follow
from orchestrator.transfers.pull import receive_source
from orchestrator.transfers.push import sink_secret

CONNECT_TIMEOUT = 60


class Pump:
    """The two websockets and the thread that carries frames between them."""

    def __init__(self, src: RemoteClient, src_path: str, src_token: str, tgt: RemoteClient, tgt_path: str,
                 tgt_token: str) -> None:  # fmt: skip
        self.ends = ((src, src_path, src_token), (tgt, tgt_path, tgt_token))
        self.error: OrchError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._main, name="orch relay", daemon=True)

    def start(self) -> None:
        """Connect both ends (an error then is raised here) and start carrying."""
        self._thread.start()
        self._connected.wait(CONNECT_TIMEOUT + 10)
        if self.error is not None:
            raise self.error

    def check(self) -> None:
        """The pump's failure, if it failed (a companion check for :func:`follow`)."""
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to stop
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except OrchError as exc:
            self.error = exc
        except BaseException as exc:  # noqa: BLE001 - reported through check()
            if not isinstance(exc, asyncio.CancelledError):
                self.error = Unavailable(f"the relay broke: {str(exc) or type(exc).__name__}")
        finally:
            self._connected.set()

    async def _run(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        async with contextlib.AsyncExitStack() as stack:
            sockets = []
            for client, path, token in self.ends:
                session, base = session_for(client)
                await stack.enter_async_context(session)
                try:
                    ws = await asyncio.wait_for(
                        session.ws_connect(base + path, headers={"Authorization": f"Bearer {token}"},
                                           max_msg_size=MAX_MESSAGE, compress=0, autoping=True),
                        CONNECT_TIMEOUT,
                    )  # fmt: skip
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise _connect_error(client.remote, exc) from None
                sockets.append(ws)
            self._connected.set()
            a, b = sockets
            await asyncio.gather(self._carry(a, b), self._carry(b, a))

    async def _carry(self, frm: aiohttp.ClientWebSocketResponse, to: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in frm:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await to.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await to.send_str(msg.data)
            else:
                break
        await to.close()  # one side ended the conversation: the other learns it the same way


def _connect_error(remote: str, exc: BaseException) -> OrchError:
    """A refusal (the agent's 4xx, e.g. a spent token) as such; anything else is transient."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        reason = (exc.headers or {}).get("X-Orch-Error") or f"{exc.status} {exc.message}"
        if 400 <= exc.status < 500:
            return error_for_status(exc.status, f"{remote} refused the relay: {reason}")
        return Unavailable(f"the relay could not connect to {remote}: {reason}")
    return Unavailable(f"the relay could not connect to {remote}: {str(exc) or type(exc).__name__}")


def _worker_certificate() -> str:
    return ClientConfig.current().client_cert()[0].read_text()


def transfer(ctx: StepContext, job: Job) -> dict[str, Any]:
    """Issue the migration to the worker's certificate, open the sink for it, pump, follow."""
    pem = _worker_certificate()
    tgt, src = target(ctx, job), source(ctx, job)
    prior = job.state.target_op
    if prior:  # redelivered: the relay died with its worker; its sink ends once the connections drop
        op = tgt.operation_wait(prior, 30)
        if op["status"] == "Running":
            raise Unavailable("the previous relay of this job still runs on the target; retrying")
        if op["status"] == "Success":
            return op.get("metadata") or {}  # it had got through before the worker died
        ctx.jobs.update_state(job, target_op=None)
    if job.state.migration_to != "worker" or job.state.migration_spent:
        ctx.jobs.update_state(job, target_certificate=pem, migration_to="worker")
        job = reissue(ctx, ctx.jobs.get(job.id))
    s = job.state
    if not tgt.url.startswith("https://") or not src.url.startswith("https://"):
        raise OrchError("relay mode needs both agents reached over HTTPS (a unix-socket remote has no TLS)")
    sink = tgt.receive_container(s.target_name, receive_source(job, "relay", certificate=pem))
    sink_op = sink["operation"]
    ctx.jobs.update_state(job, target_op=sink_op, migration_spent=True)
    opened = sink_secret(sink)
    fs_secret = ctx.jobs.secrets(job.id).get("fs", "")
    pump = Pump(src, f"/1.0/migrations/{s.migration_id}/fs", fs_secret,
                tgt, f"/1.0/sinks/{opened['sink']}/fs", opened["secret"])  # fmt: skip
    try:
        pump.start()
        return follow(ctx, job, target(ctx, job, timeout=POLL + 30), sink_op, pump.check)
    finally:
        pump.stop()
