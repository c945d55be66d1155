"""A head start on an apply's next batch, taken while the current one waits.

Owns the helper thread of an apply and what it prepared for the next batch. The
``Applier`` (``policy/batch.py``) says when; two kinds of work run there:

- ``decide``: while a batch's last call is in flight (the main thread waits on the
  server and does not touch the file), the next batch is decided over the file as
  it is, and its runs' ``updated`` stamps in the file are read with it (``DecidedAhead``);
- ``fetch``: while a batch's outcomes are written (the main thread writes the file
  and sends nothing), the next batch's re-read is sent. HTTP only: the answer is
  compared with the file and written by the main thread, in step 1, after those
  outcomes.

The two threads never use the file at once: ``settle`` returns once the helper is
done with it, and the main thread calls it before it touches the file again (the
API session is safe to share between threads). A head start never replaces a
check: the next batch is still re-read right before its call (its window is
measured from that answer), and a decision made ahead is used only when that
re-read left every run of the batch in the file as it was (which the stamps read
with the decision tell without a query). The ``Applier`` asks
for a head start only for rules whose decision reads each run's own row. Must
not: write the file, send a call, or choose the batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from flowsync.policy.plan import Decision
from flowsync.sync import Fetched

__all__ = ["Ahead", "DecidedAhead", "Prepared", "Task"]

T = TypeVar("T")


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
    """A batch decided over the file, and what the file held of its runs then."""

    decision: Decision
    stamps: dict[str, datetime | None]  # each live run in the file -> its ``updated``


@dataclass
class Prepared:
    """What the helper prepared for batch ``number`` with these runs."""

    number: int
    ids: tuple[str, ...]
    decision: Task[DecidedAhead] | None = None  # decided over the file before its re-read
    fetched: Task[Fetched] | None = None  # its re-read, sent


class Ahead:
    """The head start of one apply: at most one batch prepared, at most one task running."""

    def __init__(self) -> None:
        self.prepared: Prepared | None = None

    def _for(self, number: int, ids: list[str]) -> Prepared:
        if self.prepared is None or (self.prepared.number, self.prepared.ids) != (
            number,
            tuple(ids),
        ):
            self.settle()
            self.prepared = Prepared(number, tuple(ids))
        return self.prepared

    def decide(self, number: int, ids: list[str], fn: Callable[[], DecidedAhead]) -> None:
        """Decide batch ``number`` on the helper; the file is the helper's until ``settle``."""
        self._for(number, ids).decision = Task(fn)

    def fetch(self, number: int, ids: list[str], fn: Callable[[], Fetched]) -> None:
        """Send batch ``number``'s re-read on the helper (no file access)."""
        self._for(number, ids).fetched = Task(fn)

    def settle(self) -> None:
        """Return once the helper no longer uses the file."""
        if self.prepared is not None and self.prepared.decision is not None:
            self.prepared.decision.wait()

    def close(self) -> None:
        """Return once every task is done. (An interrupted apply does not call this: its
        helper may still wait on the server, and being a daemon it never holds up the exit.)"""
        self.settle()
        if self.prepared is not None and self.prepared.fetched is not None:
            self.prepared.fetched.wait()
        self.prepared = None

    def take(self, number: int, ids: list[str]) -> Prepared | None:
        """What was prepared for batch ``number`` with exactly these runs (else None, and
        whatever was prepared is dropped); the helper is done with the file on return."""
        self.settle()
        prepared, self.prepared = self.prepared, None
        if prepared is None or (prepared.number, prepared.ids) != (number, tuple(ids)):
            return None
        return prepared
