"""Prefect Cloud answers an events query for at most 14 days: the pull never asks for more.

A fake transport records the bodies (Cloud's limit is not something a local
server enforces); the answers are what the events API returns.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from flowsync.api import PrefectClient
from flowsync.api.client import EVENTS_QUERY_SPAN
from flowsync.config import ApiSettings

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
