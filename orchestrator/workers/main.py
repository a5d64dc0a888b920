"""``orch worker``: a supervisor process and, under it, a Celery worker consuming orch's queue.

The Celery process is restarted when it dies (a crash, an unrecoverable error in a dependency, the OOM
killer), after 1, 2, 4 … 30 s, so a host running one ``orch worker`` keeps running jobs without anyone
starting it again; what the dead process held comes back to the queue after the visibility timeout
(orchestrator/workers/leases.py). SIGTERM, SIGINT and SIGQUIT are passed on to the Celery process,
which runs in a process group of its own (warm or cold shutdown), and end the supervisor with it; an
exit with status 0 (a shutdown asked over Celery's remote control) is not restarted either.

The default pool is threads: steps spend their time waiting on agents and Redis, not on the CPU.
Anything after ``--`` is passed to ``celery worker`` unchanged (e.g. ``-- --pool prefork``).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger(__name__)

#: a Celery process that ran this long before dying was healthy: the next restart waits only 1 s
HEALTHY_AFTER = 60.0
MAX_BACKOFF = 30.0


def run_worker(concurrency: int, loglevel: str, name: str | None, extra: list[str]) -> None:
    """Supervise the Celery worker process (the ``orch worker`` command)."""
    argv = celery_argv(concurrency, loglevel, name, extra)
    command = [sys.executable, "-m", "orchestrator.workers.main", json.dumps(argv)]
    child: subprocess.Popen[bytes] | None = None
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    delay = 1.0
    while True:
        started = time.monotonic()
        # a process group of its own: a Ctrl-C at the terminal reaches the supervisor alone, which passes
        # it on once (Celery takes a second SIGINT as a cold shutdown, killing the running steps)
        child = subprocess.Popen(command, process_group=0, preexec_fn=_die_with_parent)  # noqa: PLW1509
        status = _wait(child)
        if stopping or status == 0:
            sys.exit(status if status >= 0 else 128 - status)
        delay = 1.0 if time.monotonic() - started > HEALTHY_AFTER else min(delay * 2, MAX_BACKOFF)
        print(f"orch worker: the Celery process exited with status {status}; restarting it in {delay:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            sys.exit(0)


def _wait(child: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries this already
            continue


def celery_argv(concurrency: int, loglevel: str, name: str | None, extra: list[str]) -> list[str]:
    return [
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
        # workers need not know each other: no gossip, no start-up exchange (each costs Redis traffic
        # per worker and second, and gossip broke on reconnects); Flower reads the task events
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"{name or 'orch'}@{socket.gethostname()}",
        *extra,
    ]


def celery_process(argv: list[str]) -> None:
    """The supervised process: the Celery worker with orch's bootsteps and the kombu work-around."""
    from orchestrator.redisserver import redis_url
    from orchestrator.settings import Settings

    redis_url(Settings.from_env())  # the embedded Redis, if it is the one, runs before Celery connects
    from orchestrator.celeryapp import app
    from orchestrator.workers import kombu_fixes
    from orchestrator.workers.dispatcher import DispatcherStep
    from orchestrator.workers.leases import HeartbeatStep

    kombu_fixes.apply()
    app.steps["worker"].add(DispatcherStep)  # starts the chains of submitted jobs
    app.steps["worker"].add(HeartbeatStep)  # keeps the messages and runs this worker holds its own
    app.worker_main(argv)


def _die_with_parent() -> None:
    """In the Celery process before it runs: SIGKILL when the supervisor dies, so no worker outlives its
    ``orch worker``; a supervisor killed (SIGKILL, the OOM killer) is a crash of the whole worker, and
    what it held comes back to the queue after the visibility timeout."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    celery_process(json.loads(sys.argv[1]))
