"""The Celery floor's worker (bench/celeryfloor.py): orch's own Celery app and worker — its settings,
bootsteps (the heartbeat) and kombu work-around, started with the arguments ``orch worker`` gives Celery —
running a chain of five tasks that do nothing, so that what the chain costs Celery and kombu alone can be
told apart from what orch's steps add.

Run as ``python -m bench.floorapp '<celery argv as JSON>'`` with ``ORCH_REDIS_URL`` set.
"""

from __future__ import annotations

import json
import os
import sys

import redis

from orchestrator.celeryapp import make_app

#: as many tasks as a move's chain (orchestrator/chain.py)
LENGTH = 5
DONE = "floor:done"

app = make_app()
_client: redis.Redis | None = None


@app.task(name="floor.step", bind=True)
def step(self, n: int, last: bool) -> int:  # type: ignore[no-untyped-def]
    """Nothing, but for the chain's last task: one INCR, so the harness knows how many chains ended."""
    global _client
    if last:
        if _client is None:
            _client = redis.Redis.from_url(os.environ["ORCH_REDIS_URL"])
        _client.incr(DONE)
    return n


def chain_of(n: int):  # type: ignore[no-untyped-def]
    from celery import chain

    return chain(*(step.si(n, i == LENGTH - 1) for i in range(LENGTH)))


def main(argv: list[str]) -> None:
    from orchestrator.workers import kombu_fixes
    from orchestrator.workers.leases import HeartbeatStep

    kombu_fixes.apply()
    app.steps["worker"].add(HeartbeatStep)
    app.worker_main(argv)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
