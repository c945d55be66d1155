"""Work an apply does for its batches ahead of them: decisions made over the file before
the re-read, and the call left in flight while the next batch is checked.

Owns two things the ``Applier`` (``policy/batch.py``) uses when a batch and the ones
after it decide a run from its own row (``Rereader.own_rows``; decisions made ahead
only when they read nothing else, ``Rereader.ahead_ok``):

- ``Ahead``: one decision over the file for up to ``AHEAD_BATCHES`` batches of a
  rule, made before the first of them is re-read (the rules' SQL scans the file, so a
  decision costs about the same for 50 runs as for 400), with their runs' ``updated``
  stamps and row ids in the file read with it (``DecidedAhead``; the row ids let the
  batch mark its deleted runs without a scan). Each batch takes its part.
  A decision made ahead never replaces a check: each batch is still re-read right
  before its call (its window is measured from that answer), and its part is used only
  when that re-read left every run of the batch in the file as it was (the stamps tell,
  without a query; apply writes a run's row only in its own batch) and answered within
  ``AHEAD_MAX_AGE`` of the decision (a rule may read the clock).
- ``Task``: a batch's last call, sent on its own daemon thread, so that the next
  batch is re-read, decided and sent while it is in flight (at most two calls out).
  The thread does HTTP only; every file access stays on the apply's thread, and an
  interrupted apply never waits for it.

Must not: write the file, choose the batches, or decide when a call may overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from flowsync.policy.plan import Decision
from flowsync.store.synced_tables import Stamp

__all__ = ["AHEAD_BATCHES", "AHEAD_MAX_AGE", "Ahead", "DecidedAhead", "Task"]

T = TypeVar("T")

# Batches decided in one decision made ahead: a decision costs about the same for 50 runs as
# for 800 (the rules' SQL scans the file: ~50 ms at a million runs), so each batch pays a
# sixteenth. 16 batches take ~2 s at a million runs, inside AHEAD_MAX_AGE; 16 rather than 8:
# the apply's thread 35 -> 30 ms of CPU a batch there (BENCHMARKS.md).
AHEAD_BATCHES = 16
# A decision made ahead stands only if its batch's re-read answers within this many seconds of
# it: a rule may read the clock (now()), and a throttled or slow call must not stretch it.
AHEAD_MAX_AGE = 3.0


class Task(Generic[T]):
    """``fn`` run on a daemon thread (an interrupted apply never waits for it to exit)."""

    def __init__(self, fn: Callable[[], T], name: str = "flowsync-call") -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(fn,), name=name, daemon=True).start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait until it has returned or raised, at most ``timeout`` seconds; whether it has."""
        return self._done.wait(timeout)

    def peek(self) -> T | None:
        """Its value if it has returned one, else None (never waits, never raises)."""
        return self._value if self._done.is_set() and self._error is None else None

    def result(self) -> T:
        """Its value, or what it raised, raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass(frozen=True)
class DecidedAhead:
    """Runs decided over the file, with what the file held of them then (``decision.rows``),
    and when (monotonic seconds, taken before the decision read the file or its clock)."""

    decision: Decision
    made_at: float

    @property
    def stamps(self) -> dict[str, Stamp]:
        """Each live run in the file -> its stamp (``updated`` and the unstamped columns)."""
        return {i: updated for i, (updated, _) in self.decision.rows.items()}

    @property
    def rowids(self) -> dict[str, int]:
        """Each live run in the file -> where its row was."""
        return {i: rowid for i, (_, rowid) in self.decision.rows.items()}

    def part(self, ids: tuple[str, ...]) -> DecidedAhead:
        """The same decision for ``ids`` (some of its runs) alone."""
        d = self.decision
        return DecidedAhead(
            Decision(
                {i: d.reasons[i] for i in ids},
                d.ranked_above,
                {i: d.rows[i] for i in ids if i in d.rows},
            ),
            self.made_at,
        )


class Ahead:
    """The decision made ahead of one apply's batches: at most one, for up to
    ``AHEAD_BATCHES`` batches."""

    def __init__(self) -> None:
        self.decided: dict[int, tuple[str, ...]] = {}  # batch -> its runs in ``decision``
        self.decision: DecidedAhead | None = None

    def holds(self, number: int, ids: Sequence[str]) -> bool:
        """The decision made ahead covers batch ``number`` with exactly these runs."""
        return self.decision is not None and self.decided.get(number) == tuple(ids)

    def decide(self, batches: Mapping[int, Sequence[str]], fn: Callable[[], DecidedAhead]) -> None:
        """Decide ``batches`` (batch -> its runs) in one decision, now; replaces what an
        earlier decision made ahead still held."""
        self.decided, self.decision = {}, None
        decision = fn()
        self.decided = {number: tuple(ids) for number, ids in batches.items()}
        self.decision = decision

    def take(self, number: int, ids: Sequence[str]) -> DecidedAhead | None:
        """Batch ``number``'s part of the decision made ahead, if it covers exactly these
        runs (else None); what it held for this batch or an earlier one is dropped."""
        key = tuple(ids)
        part = (
            self.decision.part(key)
            if self.decision is not None and self.decided.get(number) == key
            else None
        )
        self.decided = {n: i for n, i in self.decided.items() if n > number}
        if not self.decided:
            self.decision = None
        return part
