"""A request budget: at most N requests a minute from one client, paced before the server says 429.

Owns: the pacing of every request a ``PrefectClient`` sends when the user set
``--max-requests-per-minute`` (Prefect Cloud's rate limit is per account and
shared with the production workers, so a pull must leave them their share).
A token bucket (as GCRA: one "theoretical arrival time") shared by every
thread of the client: each ``acquire`` reserves the next slot under a lock and
sleeps outside it, so concurrent requests are served in order and together
never exceed the rate. Evenly spaced by default (``burst`` 1): a limit counted
over any rolling second sees no more than over the minute, which a burst of a
second's worth would break (measured: 3 throttled requests instead of 0). Keeps how often and how long the budget, not the
server, held requests back. A call that changes runs takes its slot without waiting
(``acquire(wait=False)``), as does every read between a batch's re-read and its
call: the batch waits for a free slot (``wait_due``) before its re-read, never
between that re-read and the call, so the re-read -> call window stays what its
checks measure; ``due_now`` tells a batch whether its next call could go at once.
Must not: send requests, print, or retry.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetStats:
    """What the budget did: requests it let through, how many it made wait, and for how long."""

    per_minute: float
    requests: int
    waits: int
    waited_seconds: float

    def to_json(self) -> dict[str, float | int]:
        return {
            "max_requests_per_minute": self.per_minute,
            "requests": self.requests,
            "waits": self.waits,
            "waited_seconds": round(self.waited_seconds, 3),
        }


class RequestBudget:
    """At most ``per_minute`` requests a minute, evenly spaced (``burst`` may go at once), across threads."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (per_minute > 0 and math.isfinite(per_minute)):  # NaN passes ``<= 0``
            raise ValueError("a request budget needs a positive, finite rate")
        self.per_minute = float(per_minute)
        self.interval = 60.0 / self.per_minute
        self.burst = max(1, burst or 1)
        self._tolerance = (self.burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat: float | None = None  # when the bucket is next empty of reservations
        self._requests = 0
        self._waits = 0
        self._waited = 0.0

    def acquire(self, *, wait: bool = True) -> float:
        """Take one slot, sleeping until it is due; return the seconds waited (0.0: none).
        ``wait=False``: take it now, not sleeping; the requests after it wait for it instead
        (a call that changes runs must go out right after the re-read that checked them)."""
        with self._lock:
            now = self._clock()
            due_in = self._counted(self._due_in(now) if wait else 0.0)
            self._tat = max(now if self._tat is None else self._tat, now) + self.interval
            self._requests += 1
        return self._slept(due_in)

    def wait_due(self) -> float:
        """Sleep until a slot is free, taking none; return the seconds waited (0.0: none).
        Where a caller's next requests must not wait (``acquire(wait=False)``)."""
        with self._lock:
            due_in = self._counted(self._due_in(self._clock()))
        return self._slept(due_in)

    def due_now(self) -> bool:
        """Whether a slot is free now: ``acquire`` would not sleep."""
        with self._lock:
            return self._due_in(self._clock()) == 0.0

    def _due_in(self, now: float) -> float:
        return 0.0 if self._tat is None else max(0.0, self._tat - self._tolerance - now)

    def _counted(self, wait: float) -> float:
        if wait > 0:  # (under the lock)
            self._waits += 1
            self._waited += wait
        return wait

    def _slept(self, wait: float) -> float:
        if wait > 0:  # out of the lock: the slot is reserved, later threads queue behind it
            self._sleep(wait)
        return wait

    def stats(self) -> BudgetStats:
        with self._lock:
            return BudgetStats(self.per_minute, self._requests, self._waits, self._waited)
