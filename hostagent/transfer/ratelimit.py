"""Bandwidth limits: token buckets on the bytes a migration moves, whatever method and path carry them.

One bucket per limit: the job's (``--bwlimit``, applied by the source) and each agent's total
(``migration.bwlimit``, shared by all the transfers that agent sends or receives at once). A
:class:`Throttle` takes from all of its buckets, so the effective limit is the smallest. Data is taken
first and paid for after (a bucket may go into debt): the caller then waits until the debt is paid,
which keeps the average exact without splitting chunks. The data-link relay thread waits by not polling
(so TCP's own back-pressure slows the peer), the websocket path by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from orchapi.errors import BadRequest
from orchapi.rates import parse_rate

log = logging.getLogger(__name__)

#: the server config key of an agent's total migration bandwidth (e.g. "50MiB"; empty: unlimited)
BWLIMIT_KEY = "migration.bwlimit"


def configured_rate(value: str) -> int | None:
    """The rate a stored ``migration.bwlimit`` means (None: unset, or unreadable: logged, not fatal)."""
    if not value:
        return None
    try:
        return parse_rate(value)
    except BadRequest as exc:
        log.warning("ignoring %s=%r: %s", BWLIMIT_KEY, value, exc)
        return None


class TokenBucket:
    """``rate`` bytes per second (None: unlimited), up to ``burst`` bytes ahead."""

    def __init__(self, rate: int | None = None) -> None:
        self._lock = threading.Lock()
        self.rate: int | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self.set_rate(rate)

    def set_rate(self, rate: int | None) -> None:
        """Change the limit, for the transfers running now too (an agent's config changed)."""
        with self._lock:
            self.rate = rate or None
            self._tokens = min(self._tokens, self._burst())

    def _burst(self) -> float:
        return max(self.rate / 8, 64 * 1024) if self.rate else 0.0

    def take(self, n: int) -> float:
        """Take ``n`` bytes' worth; the seconds to wait before the next (0 while within the limit)."""
        if not self.rate:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._tokens + (now - self._stamp) * self.rate, self._burst()) - n
            self._stamp = now
            return -self._tokens / self.rate if self._tokens < 0 else 0.0


class Throttle:
    """The buckets one direction of one transfer answers to; counts the time it made the transfer wait."""

    def __init__(self, *buckets: TokenBucket | None) -> None:
        self.buckets = [b for b in buckets if b is not None]
        self.throttled = 0.0  # seconds of waiting imposed

    def limited(self) -> bool:
        """Whether any of its buckets has a rate now (readers then take small steps)."""
        return any(b.rate for b in self.buckets)

    def take(self, n: int) -> float:
        wait = max((b.take(n) for b in self.buckets), default=0.0)
        self.throttled += wait
        return wait

    async def pace(self, n: int) -> None:
        """For asyncio callers: take ``n`` and sleep off any debt."""
        wait = self.take(n)
        if wait:
            await asyncio.sleep(wait)
