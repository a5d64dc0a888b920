"""The Celery application: Redis broker and result backend, tasks that survive a worker's death.

Tasks are acknowledged late and rejected back to the queue when their worker is lost, so a step whose
worker was killed runs again on another worker (every step is idempotent). Redis redelivers such a task
after the broker's ``visibility_timeout``; no task stays unacknowledged for long because the long part of
a transfer runs inside the agents and the worker only follows it.
"""

from __future__ import annotations

from celery import Celery

from orchestrator.redisserver import redis_url
from orchestrator.settings import Settings

TASK_MODULES = [
    "orchestrator.tasks.verify_target",
    "orchestrator.tasks.issue_token",
    "orchestrator.tasks.pull_image",
    "orchestrator.tasks.transfer_delta",
    "orchestrator.tasks.delete_source",
    "orchestrator.tasks.rename",
]


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    url = redis_url(settings)
    app = Celery("orch", broker=url, backend=url, include=TASK_MODULES)
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 86400,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue="orch",
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()
