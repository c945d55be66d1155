"""The head start of an apply's next batch (``policy/ahead.py``), without a server.

What the real-server tests cannot pin down by timing: the helper's file work is over
whenever ``settle``/``take`` return, what it raised reaches the batch (a fetch) or is
dropped for a decision made in place (a decision), and a head start prepared for other
runs than the batch's is never handed to it.
"""

from __future__ import annotations

import threading
import time

import pytest

from flowsync.errors import ApiError
from flowsync.policy.ahead import Ahead, DecidedAhead, Task
from flowsync.policy.plan import Decision
from flowsync.sync import Fetched

DECISION = DecidedAhead(Decision({"a": None}, frozenset()), {"a": None}, 0.0)


def slow_decision(log: list[str]) -> DecidedAhead:
    time.sleep(0.2)
    log.append("done")
    return DECISION


def test_settle_returns_only_once_the_decision_made_ahead_is_done() -> None:
    ahead, log = Ahead(), list[str]()
    ahead.decide({2: ["a"]}, lambda: slow_decision(log))
    ahead.settle()
    assert log == ["done"]


def test_a_head_start_goes_to_its_batch_only() -> None:
    ahead = Ahead()
    fetched = Fetched(("a",), [], 0.0)
    ahead.decide({2: ["a"]}, lambda: DECISION)
    ahead.fetch(2, ["a"], lambda: fetched)
    assert ahead.take(3, ["a"]) is None  # another batch: dropped
    assert ahead.take(2, ["a"]) is None  # and gone
    ahead.decide({2: ["a", "b"]}, lambda: DECISION)
    assert ahead.take(2, ["a"]) is None  # other runs (an earlier apply settled "b")
    ahead.decide({2: ["a"]}, lambda: DECISION)
    ahead.fetch(2, ["a"], lambda: fetched)
    prepared = ahead.take(2, ["a"])
    assert prepared is not None and prepared.decision is not None and prepared.fetched is not None
    assert prepared.decision == DECISION and prepared.fetched.result() is fetched
    assert ahead.take(2, ["a"]) is None  # handed over once


def test_a_dropped_head_start_is_waited_for_before_the_file_is_used_again() -> None:
    ahead, log = Ahead(), list[str]()
    ahead.decide({2: ["a"]}, lambda: slow_decision(log))
    assert ahead.take(5, ["z"]) is None
    assert log == ["done"]


def test_what_the_helper_raised_reaches_the_batch_or_is_left_to_it() -> None:
    def fails() -> Fetched:
        raise ApiError("the server cannot be read")

    def bad_rule() -> DecidedAhead:
        raise RuntimeError("rule SQL timed out")

    ahead = Ahead()
    ahead.decide({2: ["a"]}, bad_rule)
    ahead.fetch(2, ["a"], fails)
    prepared = ahead.take(2, ["a"])
    assert prepared is not None and prepared.fetched is not None
    assert prepared.decision is None  # the batch decides in place
    with pytest.raises(ApiError, match="cannot be read"):
        prepared.fetched.result()  # as a re-read in place would raise


def test_the_helper_is_a_daemon_thread_an_interrupted_apply_does_not_wait_for() -> None:
    names: list[tuple[str, bool]] = []

    def note() -> None:
        current = threading.current_thread()
        names.append((current.name, current.daemon))

    Task(note).result()
    assert names == [("flowsync-ahead", True)]


def test_close_returns_once_every_task_is_done() -> None:
    ahead, log = Ahead(), list[str]()

    def slow_fetch() -> Fetched:
        time.sleep(0.2)
        log.append("fetched")
        return Fetched(("a",), [], 0.0)

    ahead.fetch(2, ["a"], slow_fetch)
    ahead.close()
    assert log == ["fetched"] and ahead.fetched is None and ahead.decision is None


def test_one_decision_made_ahead_serves_each_of_its_batches_with_its_own_part() -> None:
    """Batches 2-4 decided at once: each takes only its runs' reasons and stamps; taking
    batch 3 drops what batch 2 did not take and keeps batch 4's."""
    whole = DecidedAhead(
        Decision({"a": None, "b": "protected tag", "c": None, "d": None}, frozenset()),
        {"a": None, "b": None, "c": None},  # d: not live in the file
        12.5,
    )
    ahead = Ahead()
    ahead.decide({2: ["a", "b"], 3: ["c"], 4: ["d"]}, lambda: whole)
    assert ahead.holds(2, ["a", "b"]) and not ahead.holds(2, ["a"])
    third = ahead.take(3, ["c"])
    assert third is not None and third.decision is not None
    assert third.decision.decision.reasons == {"c": None}
    assert third.decision.stamps == {"c": None} and third.decision.made_at == 12.5
    assert not ahead.holds(2, ["a", "b"]) and ahead.take(2, ["a", "b"]) is None
    fourth = ahead.take(4, ["d"])
    assert fourth is not None and fourth.decision is not None
    assert fourth.decision.decision.reasons == {"d": None} and fourth.decision.stamps == {}
    assert ahead.decision is None  # every batch of it taken


def test_a_batch_whose_runs_differ_from_those_decided_ahead_gets_nothing_of_it() -> None:
    ahead = Ahead()
    ahead.decide(
        {2: ["a"], 3: ["b", "c"]},
        lambda: DecidedAhead(Decision({"a": None, "b": None, "c": None}, frozenset()), {}, 0.0),
    )
    assert ahead.take(2, ["a"]) is not None
    assert ahead.take(3, ["b"]) is None  # an earlier apply settled "c": decided in place
