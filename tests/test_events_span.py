"""Prefect Cloud answers an events query for at most 14 days: the pull never asks for more.

A fake transport records the bodies (Cloud's limit is not something a local
server enforces); the answers are what the events API returns.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync.api import PrefectClient
from flowsync.api.client import EVENTS_QUERY_SPAN
from flowsync.config import ApiSettings
from flowsync.errors import ApiError

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
RUN = "6a0e2f4c-3f3a-4b8e-9c1d-2b9f0e1a7c55"


def recording(answer: Any) -> tuple[httpx.MockTransport, list[dict[str, Any]]]:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json=answer(body) if callable(answer) else answer)

    return httpx.MockTransport(handler), bodies


def spans(bodies: list[dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    return [
        (
            datetime.fromisoformat(b["filter"]["occurred"]["since"]),
            datetime.fromisoformat(b["filter"]["occurred"]["until"]),
        )
        for b in bodies
    ]


def test_changed_runs_over_40_days_take_three_queries_of_at_most_14() -> None:
    def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
        until = body["filter"]["occurred"]["until"]  # the run changed in every window
        return [{"value": f"prefect.flow-run.{RUN}", "end_time": until, "count": 1}]

    transport, bodies = recording(answer)
    with PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c:
        changed = c.changed_flow_runs(NOW - timedelta(days=40), NOW)
    windows = spans(bodies)
    assert len(windows) == 3
    assert all(end - start <= EVENTS_QUERY_SPAN for start, end in windows)
    assert windows[0][0] == NOW - timedelta(days=40) and windows[-1][1] == NOW
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))  # no gap between windows
    assert changed == {RUN: NOW}  # the latest change wins


def test_a_short_span_is_one_query() -> None:
    transport, bodies = recording([])
    with PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c:
        assert c.changed_flow_runs(NOW - timedelta(hours=1), NOW) == {}
    assert len(bodies) == 1


def test_the_events_window_check_looks_back_14_days_only() -> None:
    transport, bodies = recording({"events": []})
    with PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c:
        assert c.flow_run_event_before(NOW) is None
    [(start, end)] = spans(bodies)
    assert end == NOW and end - start == EVENTS_QUERY_SPAN


def test_a_throttled_settings_read_never_makes_a_stale_window_look_covered() -> None:
    """A server that keeps state events one day and holds none from before a pull three days
    ago: the window is not covered (a pull goes full, apply refuses). When its
    ``/admin/settings`` answers 429 on every try, the retention is not known: the check fails
    saying so, never falls back to the six-day horizon the server never claimed and answers
    "covered"."""
    import pytest

    from flowsync.api import RetryPolicy
    from flowsync.errors import ApiError
    from flowsync.sync import events_cover

    def server(throttled: bool) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/admin/settings"):
                if throttled:
                    return httpx.Response(429, headers={"Retry-After": "1"}, json={})
                return httpx.Response(200, json={"server": {"events": {"retention_period": "P1D"}}})
            return httpx.Response(200, json={"events": []})  # none from before the pull

        return httpx.MockTransport(handler)

    since = NOW - timedelta(days=3)
    settings = ApiSettings(url="http://127.0.0.1:9/api")
    retry = RetryPolicy(attempts=3)
    with PrefectClient(settings, transport=server(False), retry=retry, sleep=lambda s: None) as c:
        assert "keeps flow-run events for 1 days" in (events_cover(c, since, NOW) or "")
    with (
        PrefectClient(settings, transport=server(True), retry=retry, sleep=lambda s: None) as c,
        pytest.raises(ApiError) as unknown,
    ):
        events_cover(c, since, NOW)
    assert "admin/settings" in str(unknown.value) and "429" in str(unknown.value)


@pytest.mark.parametrize(
    ("overrides", "kept"),
    [
        ({}, timedelta(days=7)),
        ({"prefect.flow-run.heartbeat": "PT1H"}, timedelta(days=7)),  # no state event
        (
            {"prefect.flow-run.Failed": "PT2H", "prefect.task-run.Failed": "PT1H"},
            timedelta(hours=2),
        ),
    ],
)
def test_events_retention_is_the_state_events_own(
    overrides: dict[str, str], kept: timedelta
) -> None:
    """The shortest retention of a flow-run state event: the default, or an override of one
    (``db_vacuum``'s per-type overrides); a heartbeat's or a task run's override is none."""
    answer = {
        "server": {
            "events": {"retention_period": "P7D"},
            "services": {"db_vacuum": {"event_retention_overrides": overrides}},
        }
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c:
        assert c.events_retention() == kept


@pytest.mark.parametrize(
    ("ago", "overrides", "said"),
    [
        (timedelta(minutes=30), {"prefect.flow-run.Failed": "PT10M"}, None),  # not asked
        (timedelta(hours=3), {}, None),  # no type keeps its own
        (timedelta(hours=3), {"prefect.flow-run.heartbeat": "PT1H"}, None),  # no state event
        (timedelta(hours=3), {"prefect.flow-run.Failed": "PT4H"}, None),  # kept long enough
        (
            timedelta(hours=3),
            {"prefect.flow-run.Failed": "PT2H"},
            "some flow-run state events for 2 hours",
        ),
    ],
)
def test_a_state_event_type_kept_for_less_than_the_gap_is_not_vouched_for_by_older_events(
    ago: timedelta, overrides: dict[str, str], said: str | None
) -> None:
    """An event held from before the window proves it whole only for the types Prefect trims
    oldest first: one with a retention of its own (``event_retention_overrides``) shorter
    than the time since the last pull may have lost its events in it (its changes were
    missed until the daily check). Its settings are asked for only after an hour."""
    from flowsync.sync import events_cover

    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path.rsplit("/api/", 1)[-1])
        if request.url.path.endswith("/admin/settings"):
            db_vacuum = {"event_retention_overrides": overrides}
            server = {"events": {"retention_period": "P7D"}, "services": {"db_vacuum": db_vacuum}}
            return httpx.Response(200, json={"server": server})
        held = {
            "occurred": (NOW - ago - timedelta(days=1)).isoformat(),
            "event": "prefect.flow-run.Completed",
        }
        return httpx.Response(200, json={"events": [held]})

    transport = httpx.MockTransport(handler)
    with PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c:
        reason = events_cover(c, NOW - ago, NOW)
    assert (reason is None) if said is None else (said in (reason or "")), reason
    assert ("admin/settings" in asked) == (ago > timedelta(hours=1)), asked


@pytest.mark.parametrize(
    ("found", "overrides", "lost"),
    [
        (None, {}, False),  # none held at all: an idle server's aged out, not a restore
        (timedelta(hours=-13), {}, True),  # an older one held, the newest gone: a restore
        (timedelta(0), {}, False),  # the newest held
        (timedelta(hours=-13), {"prefect.flow-run.Completed": "PT12H"}, False),  # its own clock
        (timedelta(hours=-13), {"prefect.flow-run.Completed": "P1D"}, True),
    ],
)
def test_the_newest_event_gone_is_a_restore_only_when_nothing_else_took_it(
    tmp_path: Path, found: timedelta | None, overrides: dict[str, str], lost: bool
) -> None:
    """The newest state event the last pull read (13 hours ago) no longer held: a server
    restored from a backup, unless it holds none (all aged out) or a state event type's own
    retention is shorter than its age (trimmed on its own clock, older events of other
    types kept)."""
    from flowsync.store import Store
    from flowsync.sync import cursor

    newest = NOW - timedelta(hours=13)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/admin/settings"):
            db_vacuum = {"event_retention_overrides": overrides}
            server = {"events": {"retention_period": "P7D"}, "services": {"db_vacuum": db_vacuum}}
            return httpx.Response(200, json={"server": server})
        events = [] if found is None else [{"occurred": (newest + found).isoformat()}]
        return httpx.Response(200, json={"events": events})

    transport = httpx.MockTransport(handler)
    with (
        Store.writer(tmp_path / "r.duckdb") as store,
        PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c,
    ):
        with store.transaction():
            cursor.record_newest(store, newest)
        said = cursor.events_lost(c, store, NOW)
    assert (said is not None) == lost, said
    assert not lost or "restored from a backup" in (said or ""), said


@pytest.mark.parametrize(
    ("read", "answer", "said"),
    [
        (
            "changed",
            [{"value": f"prefect.flow-run.{RUN}", "end_time": "garbage"}],
            "an end_time is 'garbage', not a time",
        ),
        (
            "changed",
            [{"value": f"prefect.flow-run.{RUN}", "end_time": 12345}],
            "an end_time is '12345', not a time",
        ),
        ("changed", [1], "a list of something other than objects"),
        ("before", {"events": [{"occurred": "garbage"}]}, "an event's occurred is 'garbage'"),
        ("before", {"events": [1]}, "an event's occurred is 'None'"),
    ],
)
def test_an_events_answer_of_another_shape_is_one_api_error_naming_it(
    read: str, answer: Any, said: str
) -> None:
    """A time that is none, a row that is no object, in an events answer: one ``ApiError``
    (one line, exit 3) naming the endpoint and the field, not a ValueError, TypeError or
    AttributeError with a traceback."""
    transport, _ = recording(answer)
    with (
        PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c,
        pytest.raises(ApiError) as raised,
    ):
        if read == "changed":
            c.changed_flow_runs(NOW - timedelta(days=1), NOW)
        else:
            c.flow_run_event_before(NOW)
    assert said in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
