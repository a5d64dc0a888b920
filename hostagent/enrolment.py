"""The defence against guessing the trust password online.

Enrolment (``POST /1.0/certificates`` with the trust password) is the only thing an anonymous caller can
make the agent do that costs real work: one scrypt (~30 ms of a core and 16 MiB here). Slowing each
*answer* is not enough, since an attacker simply sends many guesses in parallel, from one address or
many. So this module refuses early and cheaply (429 with how long to wait) instead of sleeping, and:

- keys clients by address, IPv6 aggregated to its /64 (what one host or customer usually gets, so
  hopping addresses inside it gains nothing), an IPv4-mapped IPv6 address treated as the IPv4 address;
- counts a failure when the attempt *starts* (a success undoes it), so a guess answered late or dropped
  by a disconnecting client is still counted;
- lets each key have one attempt in flight at a time, with an exponential back-off between attempts;
- caps the attempts in flight globally and their rate (a token bucket), so that many addresses together
  cannot make the agent spend more than a small fraction of one core on scrypt;
- keeps its per-key state in a bounded LRU table whose entries are forgotten after a while;
- runs scrypt in its own one-thread executor, never in the agent's shared pool, so that trusted requests
  keep their latency whatever anonymous clients do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from orchapi.errors import TooManyRequests


def client_key(address: str | None) -> str:
    """Who is guessing: the IPv4 address, or the /64 of an IPv6 address."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Refused(TooManyRequests):
    """A 429 that says how long to wait (the ``Retry-After`` header carries it too)."""

    def __init__(self, reason: str, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"{reason}; retry in {self.retry_after} s")


@dataclass
class KeyState:
    """One client key's record."""

    failures: int = 0  # attempts counted as failed (counted when they start)
    in_flight: bool = False
    not_before: float = 0.0  # monotonic time before which a new attempt is refused
    seen: float = 0.0  # last activity, for forgetting


class KeyTable:
    """At most ``max_keys`` records, least recently used evicted first, idle ones forgotten.

    Records with an attempt in flight are never evicted nor forgotten (their attempt still has to be
    accounted for); they are at most the global in-flight cap, far fewer than ``max_keys``.
    """

    def __init__(self, max_keys: int, forget_after: float) -> None:
        self.max_keys, self.forget_after = max_keys, forget_after
        self._entries: OrderedDict[str, KeyState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expired(self, state: KeyState, now: float) -> bool:
        return not state.in_flight and now - state.seen > self.forget_after

    def get(self, key: str, now: float) -> KeyState | None:
        state = self._entries.get(key)
        if state is not None and self._expired(state, now):
            del self._entries[key]
            return None
        return state

    def touch(self, key: str, state: KeyState, now: float) -> None:
        """Store (or refresh) ``key`` as the most recently used, then shrink to the bound."""
        state.seen = now
        self._entries[key] = state
        self._entries.move_to_end(key)
        while self._entries:  # forget idle records at the old end
            oldest_key, oldest = next(iter(self._entries.items()))
            if not self._expired(oldest, now):
                break
            del self._entries[oldest_key]
        excess = len(self._entries) - self.max_keys
        if excess > 0:  # evict the least recently used records that have no attempt in flight
            victims = []
            for old_key, old in self._entries.items():
                if len(victims) == excess:
                    break
                if not old.in_flight:
                    victims.append(old_key)
            for old_key in victims:
                del self._entries[old_key]

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)


#: seconds an address waits after its first wrong trust password (``orch-agent --enrol-backoff``), and the
#: most it ever waits as the wait doubles with each further one
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0


class EnrolmentGuard:
    """The admission policy; thread-safe (attempts end in the scrypt thread)."""

    def __init__(
        self,
        *,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        forget_after: float = 900.0,
        max_keys: int = 4096,
        max_in_flight: int = 2,
        rate: float = 3.0,
        burst: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap = base, cap
        self.max_in_flight, self.rate, self.burst = max_in_flight, rate, burst
        self.table = KeyTable(max_keys, forget_after)
        self.in_flight = 0
        self._clock = clock
        self._tokens, self._refilled = burst, clock()
        self._lock = threading.Lock()

    def backoff(self, failures: int) -> float:
        """Seconds a key waits after its ``failures``-th counted failure."""
        return min(self.cap, self.base * 2 ** min(failures - 1, 32)) if failures > 0 else 0.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def _refusal(self, key: str, now: float) -> Refused | None:
        state = self.table.get(key, now)
        if state is not None and state.in_flight:
            return Refused("an enrolment attempt from this address is already in progress", 1)
        if state is not None and now < state.not_before:
            return Refused("too many wrong trust passwords from this address", state.not_before - now)
        if self.in_flight >= self.max_in_flight:
            return Refused("the agent is busy with other enrolment attempts", 1)
        self._refill(now)
        if self._tokens < 1:
            return Refused("the agent is busy with other enrolment attempts", (1 - self._tokens) / self.rate)
        return None

    def precheck(self, key: str) -> None:
        """Raise :class:`Refused` if ``key`` would be refused now (cheap: before reading the request)."""
        with self._lock:
            refusal = self._refusal(key, self._clock())
        if refusal is not None:
            raise refusal

    def begin(self, key: str) -> None:
        """Admit an attempt for ``key`` or raise :class:`Refused`; the attempt counts as failed from now."""
        with self._lock:
            now = self._clock()
            refusal = self._refusal(key, now)
            if refusal is not None:
                raise refusal
            self._tokens -= 1
            self.in_flight += 1
            state = self.table.get(key, now) or KeyState()
            state.failures += 1
            state.in_flight = True
            self.table.touch(key, state, now)

    def end(self, key: str, ok: bool) -> None:
        """The attempt for ``key`` is over: a success forgets the key, a failure starts its back-off."""
        with self._lock:
            now = self._clock()
            self.in_flight -= 1
            state = self.table.get(key, now)
            if state is None:
                return
            if ok:
                self.table.pop(key)
                return
            state.in_flight = False
            state.not_before = now + self.backoff(state.failures)
            self.table.touch(key, state, now)


class Enrolment:
    """Checks trust passwords under an :class:`EnrolmentGuard`, in a dedicated scrypt thread."""

    def __init__(self, check: Callable[[str], bool], guard: EnrolmentGuard | None = None) -> None:
        self._check = check
        self.guard = guard or EnrolmentGuard()
        # one thread: scrypt is CPU-bound and releases the GIL, so one thread is one core at most; the
        # guard's in-flight cap bounds what waits for it (and the memory: 16 MiB per running check)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-scrypt")

    def precheck(self, address: str | None) -> None:
        self.guard.precheck(client_key(address))

    async def check_password(self, address: str | None, password: str) -> bool:
        """Whether ``password`` is the trust password; :class:`Refused` if ``address`` must wait."""
        key = client_key(address)
        self.guard.begin(key)
        try:
            work: Future[bool] = self.executor.submit(self._check, password)
        except BaseException:
            self.guard.end(key, False)
            raise
        # the attempt ends when the check really ends (not when a cancelled caller stops waiting)
        work.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.wrap_future(work)

    def _finished(self, key: str, done: Future[bool]) -> None:
        ok = not done.cancelled() and done.exception() is None and done.result()
        self.guard.end(key, ok)
