"""A work-around for kombu 5.7.0's Redis transport, applied in ``orch worker`` processes only.

When Redis goes away while a worker holds unacknowledged messages (a step running), Celery closes the
broker connection to reconnect; closing the channel restores the messages it holds to the queue, but by
then the transport has dropped its connection info, and ``QoS.restore_unacked`` →
``Channel._connparams`` raises ``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery
does not expect that error there and stops the worker ("Unrecoverable error"), killing the steps it ran.

The same happens when a step that ran on through the reconnect ends and its message is acknowledged on
the old channel (``QoS.ack`` → ``_connparams``).

With the fix, a channel whose connection is gone restores nothing: its messages stay in Redis's unacked
index, where the heartbeat (orchestrator/workers/leases.py) keeps renewing those whose steps still run
in this worker, and the visibility sweep puts the others back on the queue (better than the restore
kombu meant to do: a step that runs on does not get a second delivery); and the acknowledgements of
such messages go over orch's own Redis connection instead.
Measured by tests/test_control_plane.py (Redis SIGKILLed and restarted mid-transfer, one worker).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def _connection_gone(qos: Any) -> bool:
    return getattr(qos.channel.connection, "client", None) is None


@functools.cache
def _fallback_client() -> Any:
    """A Redis client of orch's own, for acknowledgements a closed channel can no longer send."""
    from orchestrator.redisserver import WORKER_PATIENCE, connect, redis_url
    from orchestrator.settings import Settings

    return connect(redis_url(Settings.from_env()), WORKER_PATIENCE)


def apply() -> None:
    qos = kombu_redis.QoS
    if getattr(qos.restore_unacked, "orch_fixed", False):
        return
    restore_original, ack_original = qos.restore_unacked, qos.ack

    @functools.wraps(restore_original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and _connection_gone(self):
            held = len(self._delivered)
            if held:
                log.warning("broker connection lost: %d held message(s) left to the heartbeat", held)
            self._delivered.clear()
            return None
        return restore_original(self, client)

    @functools.wraps(ack_original)
    def ack(self: Any, delivery_tag: Any) -> None:
        if not _connection_gone(self):
            ack_original(self, delivery_tag)
            return
        # a step that ran on through a reconnect ended: acknowledge it on orch's own connection (what
        # kombu's ack does: drop it from the unacked index and hash), else it would come back later
        try:
            with _fallback_client().pipeline() as pipe:
                pipe.zrem(self.unacked_index_key, delivery_tag).hdel(self.unacked_key, delivery_tag)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001 - it comes back and finds its step done: harmless
            log.warning("acknowledgement after a reconnect not sent (%s); the message comes back", exc)

    restore_unacked.orch_fixed = True  # type: ignore[attr-defined]
    qos.restore_unacked = restore_unacked
    qos.ack = ack
