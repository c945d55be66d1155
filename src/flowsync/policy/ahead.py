"""A head start on an apply's next batch, taken while the current one waits.

Owns the helper thread of an apply and what it prepared for the next batch. The
``Applier`` (``policy/batch.py``) says when; two kinds of work run there:

- ``decide``: while a batch's last call is in flight (the main thread waits on the
  server and does not touch the file), the next batches (up to ``AHEAD_BATCHES`` of
  the same rule) are decided over the file as it is, in one decision, and their runs'
  ``updated`` stamps in the file are read with it (``DecidedAhead``). Each of those
  batches later takes its part;
- ``fetch``: while a batch's outcomes are written (the main thread writes the file
  and sends nothing), the next batch's re-read is sent. HTTP only: the answer is
  compared with the file and written by the main thread, in step 1, after those
  outcomes.

The two threads never use the file at once: ``settle`` returns once the helper is
done with it, and the main thread calls it before it touches the file again (the
API session is safe to share between threads). A head start never replaces a
check: each batch is still re-read right before its call (its window is
measured from that answer), and a decision made ahead is used only when that
re-read left every run of the batch in the file as it was (which the stamps read
with the decision tell without a query; apply writes a run's row only in its own
batch) and answered within ``AHEAD_MAX_AGE`` of the decision (a rule may read the
clock). The ``Applier`` asks
for a head start only for rules whose decision reads each run's own row. Must
not: write the file, send a call, or choose the batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from flowsync.policy.plan import Decision
from flowsync.sync import Fetched

__all__ = ["AHEAD_BATCHES", "AHEAD_MAX_AGE", "Ahead", "DecidedAhead", "Prepared", "Task"]

T = TypeVar("T")

# Batches decided in one decision made ahead: a decision costs about the same for 50 runs as
# for 400 (the rules' SQL scans the file: ~80 ms at a million runs), so each batch pays an eighth.
AHEAD_BATCHES = 8
# A decision made ahead stands only if its batch's re-read answers within this many seconds of
# it: a rule may read the clock (now()), and a throttled or slow call must not stretch it.
AHEAD_MAX_AGE = 3.0


class Task(Generic[T]):
    """``fn`` run on a daemon thread (an interrupted apply never waits for it to exit)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(fn,), name="flowsync-ahead", daemon=True).start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e
        finally:
            self._done.set()

    def wait(self) -> None:
        self._done.wait()

    def result(self) -> T:
        """Its value, or what it raised, raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def value(self) -> T | None:
        """Its value; None if it raised (the caller does the work itself)."""
        self._done.wait()
        return None if self._error is not None else self._value


@dataclass(frozen=True)
class DecidedAhead:
    """Runs decided over the file, what the file held of them then, and when (monotonic
    seconds, taken before the decision read the file or its clock)."""

    decision: Decision
    stamps: dict[str, datetime | None]  # each live run in the file -> its ``updated``
    made_at: float

    def part(self, ids: tuple[str, ...]) -> DecidedAhead:
        """The same decision for ``ids`` (some of its runs) alone."""
        return DecidedAhead(
            Decision({i: self.decision.reasons[i] for i in ids}, self.decision.ranked_above),
            {i: self.stamps[i] for i in ids if i in self.stamps},
            self.made_at,
        )


@dataclass
class Prepared:
    """What the helper prepared for batch ``number`` with these runs."""

    number: int
    ids: tuple[str, ...]
    decision: DecidedAhead | None = None  # decided over the file before its re-read
    fetched: Task[Fetched] | None = None  # its re-read, sent


class Ahead:
    """The head start of one apply: one decision made ahead for up to ``AHEAD_BATCHES``
    batches, one re-read sent, at most one task using the file."""

    def __init__(self) -> None:
        self.decided: dict[int, tuple[str, ...]] = {}  # batch -> its runs in ``decision``
        self.decision: Task[DecidedAhead] | None = None
        self.fetched: tuple[int, tuple[str, ...], Task[Fetched]] | None = None

    def holds(self, number: int, ids: Sequence[str]) -> bool:
        """A decision made ahead covers batch ``number`` with exactly these runs."""
        return self.decision is not None and self.decided.get(number) == tuple(ids)

    def decide(self, batches: Mapping[int, Sequence[str]], fn: Callable[[], DecidedAhead]) -> None:
        """Decide ``batches`` (batch -> its runs) in one decision on the helper; the file is the
        helper's until ``settle``. Replaces what an earlier decision made ahead still held."""
        self.settle()
        self.decided = {number: tuple(ids) for number, ids in batches.items()}
        self.decision = Task(fn)

    def fetch(self, number: int, ids: Sequence[str], fn: Callable[[], Fetched]) -> None:
        """Send batch ``number``'s re-read on the helper (no file access)."""
        if self.fetched is not None:
            self.fetched[2].wait()
        self.fetched = (number, tuple(ids), Task(fn))

    def settle(self) -> None:
        """Return once the helper no longer uses the file."""
        if self.decision is not None:
            self.decision.wait()

    def close(self) -> None:
        """Return once every task is done. (An interrupted apply does not call this: its
        helper may still wait on the server, and being a daemon it never holds up the exit.)"""
        self.settle()
        if self.fetched is not None:
            self.fetched[2].wait()
        self.decided, self.decision, self.fetched = {}, None, None

    def take(self, number: int, ids: Sequence[str]) -> Prepared | None:
        """What was prepared for batch ``number`` with exactly these runs (else None); what was
        prepared for it or an earlier batch is dropped, a later batch's part kept. The helper
        is done with the file on return."""
        self.settle()
        key = tuple(ids)
        decided: DecidedAhead | None = None
        if self.decision is not None and self.decided.get(number) == key:
            whole = self.decision.value()  # None if it raised: the batch decides in place
            decided = whole.part(key) if whole is not None else None
        self.decided = {n: i for n, i in self.decided.items() if n > number}
        if not self.decided:
            self.decision = None
        fetched: Task[Fetched] | None = None
        if self.fetched is not None:
            if self.fetched[:2] == (number, key):
                fetched = self.fetched[2]
            self.fetched = None
        if decided is None and fetched is None:
            return None
        return Prepared(number, key, decided, fetched)
