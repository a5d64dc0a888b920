"""Counting semaphores in Redis, so concurrency limits hold across any number of workers.

A semaphore is a sorted set of holders scored by their lease's expiry; holders whose worker died fall out
when their lease runs out. Acquire, renew and release are single Lua scripts, hence atomic. Evacuations
use one for the global ``--parallel`` limit and one per host for ``--per-host``.
"""

from __future__ import annotations

import time

import redis

from orchestrator import keys

_ACQUIRE = """
local now = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('zscore', KEYS[1], ARGV[1]) then
    redis.call('zadd', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
    return 1
end
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('zadd', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
    redis.call('expire', KEYS[1], math.ceil(tonumber(ARGV[4])) + 60)
    return 1
end
return 0
"""

_RENEW = """
if redis.call('zscore', KEYS[1], ARGV[1]) then
    redis.call('zadd', KEYS[1], tonumber(ARGV[2]), ARGV[1])
    return 1
end
return 0
"""


class Semaphores:
    """Acquire and release slots of named semaphores (``orch:sem:<name>``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    @staticmethod
    def key(name: str) -> str:
        return keys.semaphore(name)

    def acquire(self, name: str, holder: str, limit: int, lease: float) -> bool:
        return bool(self._acquire(keys=[self.key(name)], args=[holder, time.time(), limit, lease]))

    def acquire_all(self, slots: list[tuple[str, int]], holder: str, lease: float) -> bool:
        """All of ``slots`` ((name, limit) pairs) or none: a partial grab is given back at once."""
        taken: list[str] = []
        for name, limit in slots:
            if not self.acquire(name, holder, limit, lease):
                for got in taken:
                    self.release(got, holder)
                return False
            taken.append(name)
        return True

    def renew(self, name: str, holder: str, lease: float) -> bool:
        return bool(self._renew(keys=[self.key(name)], args=[holder, time.time() + lease]))

    def release(self, name: str, holder: str) -> None:
        self.r.zrem(self.key(name), holder)

    def holders(self, name: str) -> list[str]:
        self.r.zremrangebyscore(self.key(name), "-inf", time.time())
        return list(self.r.zrange(self.key(name), 0, -1))
