"""Operations: long-running work that the API answers with ``202`` and a URL to poll or wait on.

Shaped like LXD's: an operation has an id, a status (Running, Success, Failure, Cancelled), progress in its
metadata and, on failure, an error message and the HTTP status the error would have had. The work is an
asyncio task in the agent; finished operations are kept for a while so that a client that reconnects
(or a worker that restarts) can still read the outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, TypeVar

from hostagent.safetar.cancel import Cancelled
from orchapi.errors import Conflict, NotFound, OrchError, PeerUnreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

RUNNING, SUCCESS, FAILURE, CANCELLED = "Running", "Success", "Failure", "Cancelled"
STATUS_CODES = {RUNNING: 103, SUCCESS: 200, FAILURE: 400, CANCELLED: 401}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Operation:
    """One piece of background work and its observable state."""

    def __init__(self, description: str, resources: dict[str, list[str]]) -> None:
        self.id = str(uuid.uuid4())
        self.description = description
        self.resources = resources
        self.status = RUNNING
        self.created_at = self.updated_at = _now()
        self.metadata: dict[str, Any] = {}
        self.err = ""
        self.err_code = 0
        #: the error's class name where a client acts on it (orchapi/errors.py: PeerUnreachable)
        self.err_class = ""
        self.finished_monotonic: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        #: whether a client cancelled it (``DELETE /1.0/operations/<id>``), as opposed to the agent
        #: stopping: an interrupted transfer is kept to resume only in the second case
        self.cancelled_by_client = False

    def progress(self, **fields: Any) -> None:
        """Merge progress fields (e.g. ``percent``, ``bytes``) into the metadata."""
        self.metadata.update(fields)
        self.updated_at = _now()

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "class": "task",
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status": self.status,
            "status_code": STATUS_CODES[self.status],
            "resources": self.resources,
            "metadata": self.metadata,
            "may_cancel": self.status == RUNNING,
            "err": self.err,
            "err_code": self.err_code,
            "err_class": self.err_class,
        }


Work = Callable[[Operation], Awaitable[dict[str, Any] | None]]


class OperationRegistry:
    """Creates operations, runs their work and keeps finished ones for ``keep_seconds``."""

    def __init__(self, keep_seconds: float = 600.0) -> None:
        self._ops: dict[str, Operation] = {}
        self._keyed: dict[str, str] = {}  # idempotency key -> operation id
        self.keep_seconds = keep_seconds

    def start(
        self,
        description: str,
        work: Work,
        resources: dict[str, list[str]] | None = None,
        key: str | None = None,
    ) -> Operation:
        """Create an operation and schedule ``work(op)``; its return value becomes the metadata.

        ``key`` makes the request idempotent: :meth:`find` gives the same operation back for as long as
        it is kept, so a client that lost the answer (a worker killed mid-request) can ask again."""
        self._expire()
        op = Operation(description, resources or {})
        self._ops[op.id] = op
        if key is not None:
            self._keyed[key] = op.id
        op.task = asyncio.get_running_loop().create_task(self._run(op, work))
        return op

    async def _run(self, op: Operation, work: Work) -> None:
        try:
            result = await work(op)
            if result is not None:
                op.metadata.update(result)
            op.status = SUCCESS
        except asyncio.CancelledError:
            op.status, op.err, op.err_code = CANCELLED, "operation cancelled", 499
        except OrchError as exc:
            op.status, op.err, op.err_code = FAILURE, str(exc), exc.status
            op.err_class = type(exc).__name__ if isinstance(exc, PeerUnreachable) else ""
        except ConnectionError as exc:
            # a connection reset or closed under it (aiohttp's "Cannot write to closing transport"):
            # the network's fault, not a bug; 503 tells the worker a new attempt may succeed
            log.info("operation %s (%s): connection lost: %s", op.id, op.description, exc)
            op.status, op.err, op.err_code = FAILURE, f"connection lost: {exc}", 503
        except Exception as exc:  # a bug or host failure: keep the agent alive, report it
            log.exception("operation %s (%s) failed", op.id, op.description)
            op.status, op.err, op.err_code = FAILURE, f"internal error: {exc}", 500
        finally:
            op.updated_at = _now()
            op.finished_monotonic = time.monotonic()
            op.done.set()

    def get(self, op_id: str) -> Operation:
        op = self._ops.get(op_id)
        if op is None:
            raise NotFound(f"operation {op_id} not found", "finished operations are kept for 10 minutes")
        return op

    def find(self, key: str) -> Operation | None:
        """The operation started with idempotency ``key``, if it is still kept."""
        self._expire()
        op_id = self._keyed.get(key)
        return self._ops.get(op_id) if op_id else None

    def list(self) -> list[Operation]:
        self._expire()
        return sorted(self._ops.values(), key=lambda o: o.created_at)

    async def wait(self, op_id: str, timeout: float | None) -> Operation:
        op = self.get(op_id)
        try:
            await asyncio.wait_for(asyncio.shield(op.done.wait()), timeout)
        except TimeoutError:
            pass
        return op

    def cancel(self, op_id: str, by_client: bool = True) -> Operation:
        op = self.get(op_id)
        if op.status != RUNNING or op.task is None:
            raise Conflict(f"operation {op_id} is not running")
        op.cancelled_by_client = by_client
        op.task.cancel()
        return op

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.keep_seconds
        for op_id in [
            i for i, o in self._ops.items() if o.finished_monotonic and o.finished_monotonic < cutoff
        ]:
            del self._ops[op_id]
        for key in [k for k, op_id in self._keyed.items() if op_id not in self._ops]:
            del self._keyed[key]


async def outlast_cancels(future: asyncio.Future[Any]) -> bool:
    """Wait until ``future`` (a thread's work) has finished, however often the waiting task is cancelled
    meanwhile; whether it was. A thread cannot be stopped: whoever cleans up after a cancel must not
    start while it still writes. ``future``'s own outcome is left for the caller to read."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = not future.done() or cancelled  # the waiter was cancelled, not the future
        except Exception:  # noqa: BLE001 - the caller reads it
            break
    return cancelled


async def run_cancellable(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args, cancel=event)`` in a thread of ``executor``, stoppable by cancelling the caller.

    A thread cannot be interrupted, so cancelling the awaiting task (an operation's, through ``DELETE
    /1.0/operations/<id>``) sets ``event``, which ``fn`` checks as it goes (see hostagent/safetar/cancel.py),
    and then *waits* for ``fn`` to return: the cleanup ``fn`` does on its way out is over before the
    operation reports "Cancelled". If ``fn`` had passed its point of no return (an import committed)
    when the cancel came, its result stands.
    """
    event = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, cancel=event))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError as cancelled:
        event.set()
        await outlast_cancels(future)  # cancelled again: still wait for the thread to finish
        if future.exception() is None:
            return future.result()
        if isinstance(future.exception(), Cancelled):
            raise cancelled from None
        raise future.exception() from None  # type: ignore[misc]
