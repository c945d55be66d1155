"""The read endpoints: filters and counts, run history, state-change events, a run's states.

Owns: ``Reads``, the calls a pull and an apply's re-reads make, all safe to
repeat (``ApiSession.request`` retries them); the ``Page`` a filter answers; what
the filter endpoints accept (``PAGE_LIMIT``); how long one events query may span
(``EVENTS_QUERY_SPAN``). Each answer's shape is checked: one that is not what
the endpoint documents raises ``ApiError``. Must not: import httpx, send a call
that changes data, print, or touch the store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from flowsync.api.models import NOT_STATE_EVENTS
from flowsync.api.session import ApiSession
from flowsync.errors import ApiError

# What the API accepts: /filter and /count refuse `limit` above PAGE_LIMIT (422).
PAGE_LIMIT = 200


def server_time(value: Any, what: str) -> datetime:
    """A time the server sent (``what``: which answer and field), timezone-aware (UTC when it
    names none); an ``ApiError`` naming it when it is no ISO 8601 time."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise ApiError(
        f"{what} is {str(value)[:60]!r}, not a time: not an answer of a Prefect 3 API as "
        "flowsync reads them (3.0-3.9). Check that the URL is a Prefect API and that nothing "
        "between rewrites its answers."
    )


@dataclass(frozen=True)
class Page:
    """One page of a filter endpoint: the decoded rows and the body as sent.

    The body lets the store parse the page itself when a value does not fit its
    column's type (DuckDB's JSON reader copes with any shape)."""

    rows: list[dict[str, Any]]
    body: bytes

    @property
    def raw(self) -> str:
        """The body as text (decoded only when the store needs it)."""
        return self.body.decode()

    @property
    def nbytes(self) -> int:
        """The body's size."""
        return len(self.body)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Page:
        return cls(rows, json.dumps(rows).encode())

    def __len__(self) -> int:
        return len(self.rows)


class Reads(ApiSession):
    """The read endpoints, sent through the session's retries."""

    def filter(self, resource: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST /{resource}/filter; resource is flows, deployments or flow_runs."""
        answer = self.request("POST", f"{resource}/filter", body)
        if not isinstance(answer, list):
            raise ApiError(
                f"POST /{resource}/filter answered {type(answer).__name__}, expected a list."
            )
        for item in answer:
            if not isinstance(item, dict) or "id" not in item:
                raise ApiError(f"POST /{resource}/filter answered an item without an id.")
        return answer

    def filter_page(self, resource: str, body: dict[str, Any]) -> Page:
        """Like ``filter``, keeping the body text for the store to parse."""
        rows, content, _headers = self.request("POST", f"{resource}/filter", body, raw=True)
        if not isinstance(rows, list) or any(
            not isinstance(r, dict) or "id" not in r for r in rows
        ):
            raise ApiError(
                f"POST /{resource}/filter answered something other than a list of objects with ids."
            )
        return Page(rows, content)

    def count(self, resource: str, body: dict[str, Any] | None = None) -> int:
        answer = self.request("POST", f"{resource}/count", body or {})
        if not isinstance(answer, int):
            raise ApiError(
                f"POST /{resource}/count answered {self._said(repr(answer), 60)}, expected an integer."
            )
        return answer

    def flow_run_history(
        self,
        start: datetime,
        end: datetime,
        interval_seconds: float,
        body: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Counts per expected-start-time bucket and state (at most 500 buckets)."""
        payload = dict(body or {})
        payload.update(
            history_start=start.isoformat(),
            history_end=end.isoformat(),
            history_interval_seconds=interval_seconds,
        )
        answer = self.request("POST", "flow_runs/history", payload)
        if not isinstance(answer, list) or not all(isinstance(b, dict) for b in answer):
            raise ApiError(
                "POST /flow_runs/history answered something other than a list of objects."
            )
        return answer

    def changed_flow_runs(self, since: datetime, until: datetime) -> dict[str, datetime]:
        """Flow-run ids with a state-change event in [since, until], and the latest one.

        One request per ``EVENTS_QUERY_SPAN`` (14 days, Prefect Cloud's limit for
        one events query): ``/events/count-by/resource`` groups events by resource id.
        """
        changed: dict[str, datetime] = {}
        prefix = "prefect.flow-run."
        for start, end in _spans(since, until, EVENTS_QUERY_SPAN):
            body = {
                "filter": {
                    "occurred": {"since": start.isoformat(), "until": end.isoformat()},
                    "event": {"prefix": [prefix], "exclude_name": NOT_STATE_EVENTS},
                    "any_resource": {"id_prefix": [prefix]},
                },
                "time_unit": "day",
                "time_interval": 1.0,
            }
            answer = self.request("POST", "events/count-by/resource", body)
            if not isinstance(answer, list):
                raise ApiError(
                    "POST /events/count-by/resource answered something other than a list."
                )
            for row in answer:
                if not isinstance(row, dict):
                    raise ApiError(
                        "POST /events/count-by/resource answered a list of something other than objects."
                    )
                value = str(row.get("value", ""))
                if value.startswith(prefix):
                    end_time = server_time(
                        row.get("end_time"), "POST /events/count-by/resource: an end_time"
                    )
                    run_id = _run_id(value[len(prefix) :])
                    if run_id is None:
                        continue  # any client may post events: this one names no run
                    if run_id not in changed or changed[run_id] < end_time:
                        changed[run_id] = end_time
        return changed

    def flow_run_event_before(self, when: datetime) -> datetime | None:
        """When the newest flow-run state event at or before ``when`` occurred, or None if the server holds none.

        Prefect trims events oldest first (retention, ``db_vacuum``): one held at
        or before ``when`` proves every later one is still held. Looks back one
        ``EVENTS_QUERY_SPAN`` (Prefect Cloud refuses longer queries): None also when
        the newest such event is older than that.
        """
        body = {
            "filter": {
                "occurred": {
                    "since": (when - EVENTS_QUERY_SPAN).isoformat(),
                    "until": when.isoformat(),
                },
                # The event name alone: Prefect's flow-run events are about their run. An
                # `any_resource` filter as well made PostgreSQL take 0.29-0.46 s for this
                # request now and then, against 0.01 s without (BENCHMARKS.md).
                "event": {"prefix": ["prefect.flow-run."], "exclude_name": NOT_STATE_EVENTS},
                "order": "DESC",
            },
            "limit": 1,
        }
        answer = self.request("POST", "events/filter", body)
        events = answer.get("events") if isinstance(answer, dict) else None
        if not isinstance(events, list):
            raise ApiError("POST /events/filter answered without an `events` list.")
        if not events:
            return None
        occurred = events[0].get("occurred") if isinstance(events[0], dict) else None
        return server_time(occurred, "POST /events/filter: an event's occurred")

    def flow_run_events_about(
        self, run_ids: Sequence[str], since: datetime, until: datetime
    ) -> bool:
        """Whether the server holds a state event of any of these flow runs in [since, until]
        (one request, a span of at most ``EVENTS_QUERY_SPAN``). Events outlive the runs they
        are about (a deleted run's stay until the server's retention trims them)."""
        body = {
            "filter": {
                "occurred": {
                    "since": max(since, until - EVENTS_QUERY_SPAN).isoformat(),
                    "until": until.isoformat(),
                },
                "event": {"prefix": ["prefect.flow-run."]},
                "any_resource": {"id": [f"prefect.flow-run.{i}" for i in run_ids]},
            },
            "limit": 1,
        }
        answer = self.request("POST", "events/filter", body)
        events = answer.get("events") if isinstance(answer, dict) else None
        if not isinstance(events, list):
            raise ApiError("POST /events/filter answered without an `events` list.")
        return bool(events)

    def flow_run_states(self, run_id: str) -> list[dict[str, Any]]:
        """Every state a flow run has had (GET /flow_run_states/?flow_run_id=...), oldest first."""
        answer = self.request("GET", f"flow_run_states/?flow_run_id={run_id}")
        if not isinstance(answer, list) or any(not isinstance(s, dict) for s in answer):
            raise ApiError("GET /flow_run_states/ answered something other than a list of states.")
        return in_time_order(answer)


def in_time_order(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """States oldest first by their timestamps as times (Prefect writes a whole second as
    ``...:01Z`` and others as ``...:01.500000Z``: as text, the later one sorts first). The
    server's own order (by timestamp) where one does not parse; ties keep it too."""
    try:
        when = [
            datetime.fromisoformat(str(s.get("timestamp")).replace("Z", "+00:00")) for s in states
        ]
        return [s for _, _, s in sorted(zip(when, range(len(states)), states, strict=True))]
    except (TypeError, ValueError):  # not a time, or one naive among aware ones
        return list(states)


# Prefect Cloud answers one events query for at most 14 days: longer spans are split.
EVENTS_QUERY_SPAN = timedelta(days=14)


def _run_id(text: str) -> str | None:
    """A flow run's id as the server writes it (a UUID, lower case), or None: no run's id."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _spans(since: datetime, until: datetime, span: timedelta) -> list[tuple[datetime, datetime]]:
    """[since, until] as consecutive windows of at most ``span`` (one, if it is short or empty)."""
    out = []
    start = since
    while True:
        end = min(start + span, until)
        out.append((start, end))
        if end >= until:
            return out
        start = end
