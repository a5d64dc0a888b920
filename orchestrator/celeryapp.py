"""The Celery application: Redis broker and result backend, tasks that survive a worker's death.

Tasks are acknowledged late and rejected back to the queue when their worker is lost, so a step whose
worker was killed runs again on another worker (every step is idempotent, and the job's run lease lets
one delivery run it at a time: orchestrator/runs.py). Redis hands such a task out again
``visibility_timeout`` seconds after its worker's last heartbeat (orchestrator/workers/leases.py).
"""

from __future__ import annotations

from celery import Celery

from orchestrator.redisserver import redis_url
from orchestrator.redisurl import is_sentinel, parse_sentinel
from orchestrator.settings import Settings

#: the steps' tasks, all made from orchestrator/chain.py by one module
TASK_MODULES = ["orchestrator.tasks.registry"]


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    url = redis_url(settings, start=False)  # nothing starts at import: `orch worker` starts it
    if is_sentinel(url):  # kombu's and Celery's own Sentinel support, told the primary's name
        address = parse_sentinel(url)
        url, where = address.celery_url(), address.transport_options()
    else:
        where = {}
    app = Celery("orch", broker=url, backend=url, include=TASK_MODULES)
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps for messages whose lease ran out every interval × throttle seconds (10 × 10 by
        # default: the 84–97 s recoveries seen before); every second instead, the lease being renewed
        # by the heartbeat of the worker holding it (orchestrator/workers/leases.py)
        "unacked_restore_interval": settings.restore_interval,
        "unacked_restore_throttle": 1,
        # the sweep's mutex, should a worker die holding it (default 300 s without any sweep)
        "unacked_mutex_expire": max(settings.visibility_timeout, 5),
        **where,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout, **where},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a Redis outage is waited out, however long
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 86400,
        # the job's record is what anyone reads (orch jobs, the CLI's follow, the chain's own steps):
        # Celery's results and STARTED states would only cost Redis 50 commands per job
        # (docs/benchmarks.md, "Orchestrator at scale"); monitors learn of every state from the events
        task_ignore_result=True,
        task_track_started=False,
        task_send_sent_event=False,  # Flower lists a task from its task-received event on
        worker_send_task_events=True,
        task_default_queue="orch",
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()
