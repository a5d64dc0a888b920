"""The worker's heartbeat: a live worker keeps the messages it holds and the steps it runs its own.

kombu's Redis transport keeps every delivered, unacknowledged message in a sorted set
(:data:`~orchestrator.keys.UNACKED_INDEX`) scored by the time it was delivered; every worker sweeps it
each ``restore_interval`` and puts back on the queue the messages older than the visibility timeout.
That makes a short timeout (fast recovery when a worker dies) redeliver a step that is simply long (a
transfer followed for minutes), and a long one slow to recover (the 84 s seen before this). So the
timeout is short (10 s by default) and this thread moves the score of every message the worker holds
to *now*, every quarter of the timeout: a live worker's messages stay its own however long their steps
run, whether they run, wait in the prefetch buffer or for a retry's countdown; a dead worker's go back
to the queue ``visibility_timeout`` (+ at most one sweep) after its last beat. The same beat renews the
run leases of the steps it runs (orchestrator/runs.py), which run out just as fast.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state

from orchestrator.keys import UNACKED_INDEX
from orchestrator.redisserver import connect, redis_url
from orchestrator.settings import Settings
from orchestrator.stepcontext import StepContext

log = logging.getLogger(__name__)


def held_tags() -> list[str]:
    """Delivery tags of every message this worker holds unacknowledged: running, prefetched, or
    waiting for an ETA (the sets are the event loop's; copied, retrying if one changed meanwhile)."""
    for _ in range(5):
        try:
            requests = [*state.active_requests, *state.reserved_requests, *state.scheduled_requests]
            break
        except RuntimeError:  # a set changed size while it was copied
            continue
    else:
        return []
    tags = {getattr(request.message, "delivery_tag", None) for request in requests}
    return sorted(tag for tag in tags if tag)


class Heartbeat(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="orch-heartbeat", daemon=True)
        self.every = max(settings.visibility_timeout / 4, 0.5)
        # no patience: a beat that cannot reach Redis is skipped, the next one tries again
        self.client = connect(redis_url(settings), patience=0)
        self._stopping = threading.Event()

    def beat(self) -> None:
        tags = held_tags()
        if tags:
            now = time.time()
            self.client.zadd(UNACKED_INDEX, dict.fromkeys(tags, now), xx=True)
        StepContext.get().runs.renew_held(self.client)

    def run(self) -> None:
        while not self._stopping.wait(self.every):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.debug("heartbeat skipped: %s", exc)
            except Exception:  # never let the heartbeat die: its worker's tasks would be taken away
                log.exception("heartbeat")

    def stop(self) -> None:
        self._stopping.set()


class HeartbeatStep(bootsteps.StartStopStep):
    """Runs the :class:`Heartbeat` for as long as the worker runs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: Heartbeat | None = None

    def start(self, worker: Any) -> None:
        self.thread = Heartbeat(Settings.from_env())
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
