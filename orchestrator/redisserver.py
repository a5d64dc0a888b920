"""The embedded Redis: started once, on first use, when ``ORCH_REDIS_URL`` is not set.

It is Debian's ``redis-server`` listening only on a unix socket (mode 0600) in orch's state dir, with an
append-only file so job records and the origin of moved containers survive restarts. A second ``orch``
or ``orch worker`` finds it running and shares it; a file lock keeps two from starting it at once.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from pathlib import Path

import redis

from orchapi.errors import Unavailable
from orchestrator.settings import Settings

SOCKET_NAME = "redis.sock"


def redis_url(settings: Settings, start: bool = True) -> str:
    """The Redis URL to use: ``ORCH_REDIS_URL`` or the embedded server's socket (started if needed,
    unless not ``start``: configuring Celery at import starts nothing)."""
    if settings.redis_url:
        return settings.redis_url
    if not start:
        return f"redis+socket://{settings.state_dir / SOCKET_NAME}"
    return ensure_embedded(settings.state_dir)


def _alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=2).ping())
    except redis.RedisError:
        return False


def ensure_embedded(state: Path, timeout: float = 10.0) -> str:
    """Start the embedded server unless it runs; returns its ``redis+socket://`` URL."""
    sock = state / SOCKET_NAME
    url = f"redis+socket://{sock}"
    if _alive(sock):
        return url
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not installed", "run scripts/bootstrap, or set ORCH_REDIS_URL")
    with open(state / "redis.start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(sock):
            return url
        sock.unlink(missing_ok=True)
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "600",
            "--dir", str(state),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--pidfile", str(state / "redis.pid"),
            "--logfile", str(state / "redis.log"),
        ]  # fmt: skip
        subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _alive(sock):
            if time.monotonic() > deadline:
                raise Unavailable(f"the embedded redis-server did not start; see {state / 'redis.log'}")
            time.sleep(0.02)
    return url


#: how long Redis calls keep trying through an outage (a restart, a Sentinel failover) before they raise:
#: a worker's steps pause instead of failing and go on when Redis is back; the CLI waits less (a
#: command against a Redis that is really gone says so within this long)
WORKER_PATIENCE = 120.0
CLI_PATIENCE = 15.0


def _retries(patience: float) -> int:
    """Retries of a backoff from 0.1 s doubling to 2 s (3.1 s for the first five) that last ``patience``."""
    return 5 + max(0, int((patience - 3.1) / 2.0 + 0.999))


def connect(url: str, patience: float = CLI_PATIENCE) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``redis+socket://`` or ``sentinel://``: the
    current primary, found again after a failover; orchestrator/redisurl.py), decoding to str.

    A lost connection is retried with backoff for ``patience`` seconds (:data:`WORKER_PATIENCE` for
    workers and followers of long jobs, :data:`CLI_PATIENCE` by default, less for a metrics scrape that
    must answer at once, 0 for no retry), so a Redis restart or failover is a pause, not a failure.
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    from orchestrator.redisurl import is_sentinel, parse_sentinel

    retries = _retries(patience) if patience >= 3.1 else max(0, int(patience * 2))
    options = {
        "decode_responses": True,
        "socket_connect_timeout": 3,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
    }
    if is_sentinel(url):
        address = parse_sentinel(url)
        sentinel = Sentinel(address.sentinels, socket_connect_timeout=3, socket_timeout=3)
        return sentinel.master_for(address.master, db=address.db, password=address.password, **options)
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url[len("redis+socket://") :], **options)
    return redis.Redis.from_url(url, **options)
