"""``orch worker``: a Celery worker consuming orch's queue, with task events on (for Flower).

The default pool is threads: steps spend their time waiting on agents and Redis, not on the CPU.
Anything after ``--`` is passed to ``celery worker`` unchanged (e.g. ``-- --pool prefork``).
"""

from __future__ import annotations

import socket


def run_worker(concurrency: int, loglevel: str, name: str | None, extra: list[str]) -> None:
    from orchestrator.celeryapp import app
    from orchestrator.workers.dispatcher import DispatcherStep

    app.steps["worker"].add(DispatcherStep)  # starts the chains of submitted jobs

    argv = [
        "worker",
        "--queues",
        "orch",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--task-events",
        "--hostname",
        f"{name or 'orch'}@{socket.gethostname()}",
        *extra,
    ]
    app.worker_main(argv)
