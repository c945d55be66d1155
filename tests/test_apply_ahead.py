"""The head start of an apply's next batch (``policy/ahead.py``), without a server.

What the real-server tests cannot pin down by timing: the helper's file work is over
whenever ``settle``/``take`` return, what it raised reaches the batch (a fetch) or is
left to it (the file's stamps: the batch reads the file itself), and a head start
prepared for other runs than the batch's is never handed to it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from flowsync.errors import ApiError
from flowsync.policy.ahead import Ahead, Task
from flowsync.store.synced_tables import FileStamp
from flowsync.sync import Fetched

STAMPS = {"a": FileStamp(None, datetime(2026, 12, 4, tzinfo=timezone.utc), 1)}


def slow_stamps(log: list[str]) -> dict[str, FileStamp]:
    time.sleep(0.2)
    log.append("done")
    return STAMPS


def test_settle_returns_only_once_the_stamps_read_ahead_are_done() -> None:
    ahead, log = Ahead(), list[str]()
    ahead.stamps(2, ["a"], lambda: slow_stamps(log))
    ahead.settle()
    assert log == ["done"]


def test_a_head_start_goes_to_its_batch_only() -> None:
    ahead = Ahead()
    fetched = Fetched(("a",), [], 0.0)
    ahead.stamps(2, ["a"], lambda: STAMPS)
    ahead.fetch(2, ["a"], lambda: fetched)
    assert ahead.take(3, ["a"]) is None  # another batch: dropped
    assert ahead.take(2, ["a"]) is None  # and gone
    ahead.stamps(2, ["a", "b"], lambda: STAMPS)
    assert ahead.take(2, ["a"]) is None  # other runs (an earlier apply settled "b")
    ahead.stamps(2, ["a"], lambda: STAMPS)
    ahead.fetch(2, ["a"], lambda: fetched)
    prepared = ahead.take(2, ["a"])
    assert prepared is not None and prepared.stamps is not None and prepared.fetched is not None
    assert prepared.stamps.value() is STAMPS and prepared.fetched.result() is fetched
    assert ahead.taken == 1


def test_a_dropped_head_start_is_waited_for_before_the_file_is_used_again() -> None:
    ahead, log = Ahead(), list[str]()
    ahead.stamps(2, ["a"], lambda: slow_stamps(log))
    assert ahead.take(5, ["z"]) is None
    assert log == ["done"]


def test_what_the_helper_raised_reaches_the_batch_or_is_left_to_it() -> None:
    def fails() -> Fetched:
        raise ApiError("the server cannot be read")

    def interrupted() -> dict[str, FileStamp]:
        raise RuntimeError("the file could not be read")

    ahead = Ahead()
    ahead.stamps(2, ["a"], interrupted)
    ahead.fetch(2, ["a"], fails)
    prepared = ahead.take(2, ["a"])
    assert prepared is not None and prepared.stamps is not None and prepared.fetched is not None
    assert prepared.stamps.value() is None  # the batch reads the file itself
    with pytest.raises(ApiError, match="cannot be read"):
        prepared.fetched.result()  # as a re-read in place would raise


def test_the_helper_is_a_daemon_thread_an_interrupted_apply_does_not_wait_for() -> None:
    names: list[tuple[str, bool]] = []

    def note() -> None:
        current = threading.current_thread()
        names.append((current.name, current.daemon))

    Task(note).result()
    assert names == [("flowsync-ahead", True)]
