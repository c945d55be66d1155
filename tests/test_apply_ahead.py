"""Work an apply does ahead of its batches (``policy/ahead.py``), without a server.

What the real-server tests cannot pin down by timing: one decision made ahead serves
each of its batches with its own part, never a batch whose runs differ from those it
decided, and nothing once a later batch was taken; the call left in flight runs on a
daemon thread and hands back what it raised.
"""

from __future__ import annotations

import threading

import pytest

from flowsync.errors import AuthError
from flowsync.policy.ahead import Ahead, DecidedAhead, Task
from flowsync.policy.plan import Decision

STAMP = (None, (None,) * 4)  # a run's ``updated`` and unstamped columns in the file
WHOLE = DecidedAhead(
    Decision(
        {"a": None, "b": "protected tag", "c": None, "d": None},
        frozenset(),
        {"a": (STAMP, 0), "b": (STAMP, 1), "c": (STAMP, 2)},  # d: not live in the file
    ),
    12.5,
)


def test_one_decision_made_ahead_serves_each_of_its_batches_with_its_own_part() -> None:
    """Batches 2-4 decided at once: each takes only its runs' reasons and stamps; taking
    batch 3 drops what batch 2 did not take and keeps batch 4's."""
    ahead = Ahead()
    ahead.decide({2: ["a", "b"], 3: ["c"], 4: ["d"]}, lambda: WHOLE)
    assert ahead.holds(2, ["a", "b"]) and not ahead.holds(2, ["a"])
    third = ahead.take(3, ["c"])
    assert third is not None
    assert third.decision.reasons == {"c": None}
    assert third.stamps == {"c": STAMP} and third.made_at == 12.5
    assert not ahead.holds(2, ["a", "b"]) and ahead.take(2, ["a", "b"]) is None
    fourth = ahead.take(4, ["d"])
    assert fourth is not None
    assert fourth.decision.reasons == {"d": None} and fourth.stamps == {}
    assert ahead.decision is None  # every batch of it taken
    assert ahead.take(4, ["d"]) is None  # handed over once


def test_a_batch_whose_runs_differ_from_those_decided_ahead_gets_nothing_of_it() -> None:
    ahead = Ahead()
    ahead.decide({2: ["a", "b"], 3: ["c", "d"]}, lambda: WHOLE)
    assert ahead.take(2, ["a"]) is None  # an earlier apply settled "b": decided in place
    assert ahead.take(3, ["c", "d"]) is not None  # the later batch keeps its part
    ahead.decide({5: ["a"]}, lambda: WHOLE)
    assert ahead.take(6, ["a"]) is None and ahead.decision is None  # another batch: dropped


def test_a_new_decision_replaces_what_the_last_one_still_held() -> None:
    ahead = Ahead()
    ahead.decide({2: ["a"], 3: ["b"]}, lambda: WHOLE)
    ahead.decide({3: ["c"]}, lambda: WHOLE)
    assert not ahead.holds(3, ["b"]) and ahead.holds(3, ["c"])


def test_a_decision_made_ahead_that_raises_leaves_nothing_held() -> None:
    def bad_rule() -> DecidedAhead:
        raise RuntimeError("rule SQL timed out")

    ahead = Ahead()
    ahead.decide({2: ["a"]}, lambda: WHOLE)
    with pytest.raises(RuntimeError, match="timed out"):
        ahead.decide({3: ["c"]}, bad_rule)
    assert ahead.decision is None and not ahead.holds(2, ["a"]) and not ahead.holds(3, ["c"])


def test_the_call_in_flight_runs_on_a_daemon_thread_and_hands_back_what_it_raised() -> None:
    names: list[tuple[str, bool]] = []
    release = threading.Event()

    def call() -> str:
        current = threading.current_thread()
        names.append((current.name, current.daemon))
        release.wait(5)
        raise AuthError("401: expired")

    task = Task(call)
    assert not task.done()
    release.set()
    with pytest.raises(AuthError, match="expired"):
        task.result()
    assert task.done() and names == [("flowsync-call", True)]
    assert Task(lambda: 7).result() == 7


@pytest.mark.parametrize(
    ("wait", "ago", "held"),
    [(2.0, 0.5, True), (2.0, 2.5, False), (1000.0, 60.0, True), (1000.0, 130.0, False)],
    ids=["inside-retry-after", "after-it", "long-retry-after", "past-the-120s-cap"],
)
def test_a_429_on_the_call_out_holds_other_calls_until_its_wait_or_the_cap(
    wait: float, ago: float, held: bool
) -> None:
    """A call still out answered 429 holds the next batch's call for its Retry-After, counted
    from the 429, and never longer than a batch's own wait (``MAX_THROTTLE_WAIT``, 120 s): a
    longer Retry-After would use up the held batch's attempts."""
    import time
    from types import SimpleNamespace

    from flowsync.policy.answers import Throttled
    from flowsync.policy.batch import Applier

    answer = Throttled(wait, "HTTP 429", time.monotonic() - ago)
    task = Task(lambda: answer)
    task.result()
    found = Applier._throttled_out(SimpleNamespace(out={task}))  # type: ignore[arg-type]
    assert (found is not None) is held
    if found is not None:
        assert found.at == answer.at and "HTTP 429" in found.problem
