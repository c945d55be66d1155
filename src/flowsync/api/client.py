"""One HTTP client for one Prefect API: auth, retries, error wrapping, request counts.

Owns: every request flowsync makes. Read-only calls retry 429 (honouring
``Retry-After``), 500/502/503/504, transport errors and unreadable bodies, with
bounded exponential backoff and full jitter. Calls that change data
(``idempotent=False``: the bulk endpoints, ``delete_flow_run``,
``set_flow_run_state``) are sent exactly once and never resent by this
transport: a 429 raises ``ThrottledError`` (with ``retry_after``), a connection
that was never made raises ``NotSentError`` (neither was applied), and anything
that may have been applied (5xx, a dropped connection, a timeout, an
unreadable body) raises ``UncertainError``; the caller re-reads and re-decides
before it sends again (a run may have been protected while the server asked us to
wait). Everything else becomes ``ApiError``/``AuthError``
(``NotFoundError`` for a 404, ``UnsupportedError`` for an endpoint the server's
version lacks) with one line that names the URL.

What the server can do (``capabilities()``) is read once, from
``GET /admin/version``: the bulk endpoints exist from Prefect 3.6.16. Prefect
Cloud does not say its version; it runs current code and has them. Every
self-hosted 3.x server says its version, so one that does not (a proxy hiding
``/admin``) is taken to be current too; should a bulk endpoint then answer 404,
the call raises ``UnsupportedError`` and the caller uses the per-run endpoints
every 3.x server has.

With a request budget (``ApiSettings.max_requests_per_minute``, from
``--max-requests-per-minute``, the environment or the profile) every request,
retries included, first takes a slot from a ``RequestBudget`` shared by every
thread of the client, so the client stays under its share of a quota before the
server has to say 429; ``on_retry`` also hears when the budget, not the
server, holds requests back (at most every 30 s). Must not: print, touch the store, or let
the API key out of the ``Authorization`` header.
"""

from __future__ import annotations

import base64
import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from flowsync import __version__
from flowsync.api.budget import RequestBudget
from flowsync.api.models import (
    BULK_SINCE,
    Capabilities,
    DeleteResult,
    OrchestrationResult,
    RunRetention,
)
from flowsync.config import ApiSettings, cloud_workspace
from flowsync.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    NotSentError,
    ThrottledError,
    UncertainError,
    UnsupportedError,
)

# Read-only calls (filters, counts, history) are safe to repeat after any of these: the
# SQLite-backed server answers 500/503 for "database is locked" under write load.
READ_RETRY_STATUS = {429, 500, 502, 503, 504}
TRANSPORT_ERRORS = (httpx.TransportError,)
# The request never reached the server: a call that changes data was not applied.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 7  # total tries for one request
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        # full jitter: uniform in [0, min(cap, base * 2^attempt)]
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


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

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Page:
        return cls(rows, json.dumps(rows).encode())

    def __len__(self) -> int:
        return len(self.rows)


def _unbind(response: httpx.Response) -> None:
    """Break the reference cycle httpx leaves between a read response and its stream.

    ``Client.send`` wraps the stream in one that points back at the response, so
    every response, its body (a page: ~300 KB) and httpcore's request objects
    could only be freed by Python's cyclic collector, never when the last
    reference goes. The body is read by then (``request`` never streams).
    """
    response.stream = httpx.ByteStream(b"")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - datetime.now(timezone.utc)).total_seconds()


def _decode(body: bytes) -> Any:
    """A JSON body: orjson (about 30% less CPU than json on a page of runs), else json.

    json takes what orjson refuses (NaN, integers beyond 64 bits), so nothing
    decodes differently; its errors are the caller's "unreadable body".
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PrefectClient:
    """A synchronous client; safe to share between the threads of one pull."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str], None] | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self.settings = settings
        self.retry = retry or RetryPolicy()
        if budget is None and settings.max_requests_per_minute:
            budget = RequestBudget(settings.max_requests_per_minute, sleep=sleep)
        self.budget = budget
        self._budget_told = -1e9  # when on_retry last heard that the budget is the limit
        self._capabilities: Capabilities | None = None
        self._sleep = sleep
        self._on_retry = on_retry
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        headers = {"User-Agent": f"flowsync/{__version__}", "Accept": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        elif settings.auth_string is not None:
            token = base64.b64encode(settings.auth_string.get_secret_value().encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self._base = settings.url.rstrip("/") + "/"
        self._host = urlsplit(self._base).netloc
        self._http = httpx.Client(
            base_url=self._base,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            verify=settings.verify,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )

    # -- plumbing ---------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrefectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, retried: bool) -> None:
        with self._lock:
            self.requests += 1
            if retried:
                self.retries += 1

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotent: bool = True,
        expect_json: bool = True,
        attempts: int | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request with retries; return the decoded JSON (or None for 204).

        With ``raw``, return ``(decoded, body bytes, response headers)``. With
        ``idempotent=False`` a failure the server may have acted on raises
        ``UncertainError``, ``ThrottledError`` or ``NotSentError`` at once and
        is never sent twice (see the module docstring)."""
        attempts = 1 if not idempotent else (attempts or self.retry.attempts)
        url = path if path.startswith("http") else path.lstrip("/")
        if url.startswith("http") and urlsplit(url).netloc != self._host:
            # Never send credentials to another host, e.g. via a next-page link.
            raise ApiError(
                f"Prefect API returned a link to another host ({urlsplit(url).netloc}); refusing to follow it."
            )
        where = (
            f"{self.settings.display_url}/{path.lstrip('/')}"
            if not path.startswith("http")
            else path
        )
        last_problem = ""
        for attempt in range(attempts):
            self._count(attempt > 0)
            retry_after: float | None = None
            if self.budget is not None and self.budget.acquire() > 0:
                self._budget_notice()
            try:
                response = self._http.request(method, url, json=body)
            except TRANSPORT_ERRORS as e:
                last_problem = f"{type(e).__name__}: {_short(str(e)) or 'connection failed'}"
                if not idempotent and isinstance(e, NOT_SENT_ERRORS):
                    raise NotSentError(
                        f"Prefect API at {self.settings.display_url}: {method} /{_bare(path)} "
                        f"was not sent ({last_problem}); nothing was applied."
                    ) from e
                if not idempotent:
                    raise self._uncertain(method, path, last_problem) from e
            else:
                _unbind(response)
                status = response.status_code
                if status in (401, 403):
                    raise AuthError(
                        f"Prefect API at {self.settings.display_url} refused the request "
                        f"({status} {response.reason_phrase}): check PREFECT_API_KEY / "
                        "PREFECT_API_AUTH_STRING or --api-key."
                    )
                if status == 429 and not idempotent:
                    after = _retry_after(response)
                    raise ThrottledError(
                        f"Prefect API at {self.settings.display_url} throttled {method} /{_bare(path)} "
                        f"(429{f', retry after {after:.0f}s' if after is not None else ''}); "
                        "nothing was applied.",
                        after,
                    )
                if status in READ_RETRY_STATUS and idempotent:
                    retry_after = _retry_after(response) if status == 429 else None
                    last_problem = f"HTTP {status} {_short(response.text, 80)}"
                elif status >= 500 and not idempotent:
                    raise self._uncertain(
                        method, path, f"HTTP {status} {_short(response.text, 80)}", status
                    )
                elif status in (404, 405):
                    raise NotFoundError(self._status_message(method, where, response), path, status)
                elif status >= 400:
                    raise ApiError(self._status_message(method, where, response))
                elif status == 204 or not expect_json:
                    return None
                else:
                    try:
                        decoded = _decode(response.content)
                        return (decoded, response.content, response.headers) if raw else decoded
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        # A truncated body is usually a dropped connection: try again.
                        last_problem = f"unreadable JSON body ({_short(response.text, 60)!r})"
                        if not idempotent:
                            raise self._uncertain(method, path, last_problem, status) from None
            if attempt + 1 < attempts:
                delay = self.retry.delay(attempt, retry_after)
                if self._on_retry and attempts > 2:
                    self._on_retry(
                        f"{method} {path.split('?')[0]}: {last_problem}; retrying in {delay:.1f}s"
                    )
                self._sleep(delay)
        raise ApiError(
            f"Prefect API at {self.settings.display_url} failed {method} /{path.lstrip('/').split('?')[0]} "
            f"after {attempts} attempts: {last_problem}. "
            "Check that the server is up and the URL is right, then run again."
        )

    def backoff(self, attempt: int) -> float:
        """How long the retry policy waits before try ``attempt + 1`` (for callers that resend themselves)."""
        return self.retry.delay(attempt, None)

    def _budget_notice(self) -> None:
        if self._on_retry is None or self.budget is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._budget_told < 30:
                return
            self._budget_told = now
        stats = self.budget.stats()
        self._on_retry(
            f"the request budget ({stats.per_minute:g}/min), not the server, is the limit: "
            f"{stats.waits} of {stats.requests} requests waited {stats.waited_seconds:.1f}s so far"
        )

    def pause(self, attempt: int) -> None:
        """Sleep as the retry policy would before try ``attempt + 1`` (for callers that resend themselves)."""
        self._sleep(self.retry.delay(attempt, None))

    def pause_for(self, seconds: float) -> None:
        """Sleep ``seconds`` with the client's clock (tests give it a fake one)."""
        if seconds > 0:
            self._sleep(seconds)

    def _uncertain(
        self, method: str, path: str, problem: str, status: int | None = None
    ) -> UncertainError:
        return UncertainError(
            f"Prefect API at {self.settings.display_url}: {method} /{_bare(path)} "
            f"failed in transit ({problem}); the server may have applied it.",
            problem,
            status,
        )

    def _status_message(self, method: str, where: str, response: httpx.Response) -> str:
        detail = response.text
        try:
            payload = response.json()
            if isinstance(payload, dict) and "detail" in payload:
                detail = json.dumps(payload["detail"])
        except ValueError:
            pass
        hint = ""
        if response.status_code == 404:
            hint = " Is this a Prefect API URL? It usually ends in /api."
        return f"{method} {where} answered {response.status_code}: {_short(detail, 200)}.{hint}"

    # -- endpoints --------------------------------------------------------

    def check(self) -> datetime:
        """Fail clearly unless the URL is a reachable Prefect API; return the server's clock."""
        try:
            # Two quick tries: a wrong URL or a stopped server should fail in a second, not minutes.
            answer, _text, headers = self.request("GET", "health", attempts=2, raw=True)
        except ApiError as e:
            msg = str(e)
            if "answered 404" in msg or "unreadable JSON" in msg:
                raise ApiError(
                    f"{self.settings.display_url} does not look like a Prefect API "
                    "(GET /health did not answer true). The URL usually ends in /api, "
                    "e.g. http://127.0.0.1:4200/api."
                ) from e
            raise
        if answer is not True:
            raise ApiError(
                f"{self.settings.display_url} does not look like a Prefect API "
                f"(GET /health answered {_short(json.dumps(answer), 60)}). The URL usually ends in /api."
            )
        return _server_date(headers.get("date"))

    def server_version(self) -> str | None:
        """What ``GET /admin/version`` says, or None when the server does not say (Cloud)."""
        try:
            answer = self.request("GET", "admin/version", attempts=2)
        except AuthError:
            raise
        except ApiError:
            return None
        return str(answer) if answer is not None else None

    def capabilities(self) -> Capabilities:
        """What this server can do; its version is read once per client (thread-safe)."""
        with self._lock:
            known = self._capabilities
        if known is not None:
            return known
        found = Capabilities.of(
            self.server_version(), cloud=cloud_workspace(self.settings.url) is not None
        )
        with self._lock:
            if self._capabilities is None:
                self._capabilities = found
            return self._capabilities

    def _unsupported(self, endpoint: str, caps: Capabilities) -> UnsupportedError:
        needs = ".".join(map(str, BULK_SINCE))
        has = (
            f"{caps.describe()} < {needs}"
            if caps.version and not caps.bulk
            else f"{caps.describe()}; the endpoint answered 404"
        )
        return UnsupportedError(
            f"Prefect API at {self.settings.display_url} has no POST /{endpoint} ({has}, "
            "the first release with it); upgrade the server to use it.",
            endpoint=endpoint,
            version=caps.version,
            needs=needs,
        )

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
                f"POST /{resource}/count answered {_short(repr(answer), 60)}, expected an integer."
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
        if not isinstance(answer, list):
            raise ApiError("POST /flow_runs/history answered something other than a list.")
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
                    "event": {"prefix": [prefix]},
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
                value = str(row.get("value", ""))
                if value.startswith(prefix):
                    end_time = datetime.fromisoformat(str(row["end_time"]).replace("Z", "+00:00"))
                    run_id = value[len(prefix) :]
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
                "event": {"prefix": ["prefect.flow-run."]},
                "any_resource": {"id_prefix": ["prefect.flow-run."]},
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
        return datetime.fromisoformat(str(events[0]["occurred"]).replace("Z", "+00:00"))

    def events_retention(self) -> timedelta | None:
        """How long the server keeps flow-run state events (its settings), or None if it does not say."""
        try:
            settings = self.request("GET", "admin/settings", attempts=2)
        except ApiError:
            return None  # Prefect Cloud and locked-down servers do not expose settings
        try:
            server = settings["server"]
            periods = [_duration(server["events"]["retention_period"])]
            overrides = (server.get("services", {}).get("db_vacuum", {}) or {}).get(
                "event_retention_overrides"
            ) or {}
            periods += [
                _duration(v) for k, v in overrides.items() if str(k).startswith("prefect.flow-run.")
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return min(periods)

    def run_retention(self) -> RunRetention:
        """Whether and when the server deletes flow runs on its own: Prefect's ``db_vacuum``
        (3.6.19+) with ``flow_runs`` enabled deletes runs whose end is older than its
        ``retention_period``. Unknown where the settings are not exposed (Prefect Cloud)."""
        try:
            settings = self.request("GET", "admin/settings", attempts=2)
        except AuthError:
            raise
        except ApiError:
            return RunRetention(False, None, "the server does not expose its settings")
        try:
            services = settings["server"]["services"]
            vacuum = services.get("db_vacuum") if isinstance(services, dict) else None
            if not isinstance(vacuum, dict):
                return RunRetention(True, None, "this server version deletes no runs on its own")
            enabled = vacuum.get("enabled")
            kinds = (
                {"flow_runs"}
                if enabled is True
                else set(enabled.split(",") if isinstance(enabled, str) else enabled or [])
            )
            if "flow_runs" not in {str(k).strip() for k in kinds}:
                return RunRetention(True, None, "db_vacuum does not delete flow runs")
            period = _duration(vacuum["retention_period"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return RunRetention(False, None, "the server's settings did not say")
        return RunRetention(True, period, "the server's db_vacuum retention_period")

    def server_now(self) -> datetime:
        """The server's clock (from the Date header), so cursors never depend on ours."""
        _answer, _text, headers = self.request("GET", "health", attempts=2, raw=True)
        return _server_date(headers.get("date"))

    def bulk_delete(self, ids: Sequence[str], state_types: Sequence[str] | None) -> dict[str, Any]:
        """POST /flow_runs/bulk_delete for exactly these ids (never an open filter).

        Raises ``UncertainError`` when the answer is lost: read the runs before resending;
        ``ThrottledError``/``NotSentError`` when it was not applied; ``UnsupportedError``
        on a server older than 3.6.16 (not sent at all when ``capabilities()`` already
        said so; callers choose the path from ``capabilities()`` first)."""
        body = {"flow_runs": _id_filter(ids, state_types), "limit": len(ids)}
        answer = self._bulk("flow_runs/bulk_delete", body)
        if not isinstance(answer, dict):
            raise ApiError("POST /flow_runs/bulk_delete answered something other than an object.")
        return answer

    def bulk_set_state(
        self,
        ids: Sequence[str],
        state: dict[str, Any],
        *,
        force: bool,
        state_types: Sequence[str] | None,
    ) -> dict[str, Any]:
        body = {
            "flow_runs": _id_filter(ids, state_types),
            "state": state,
            "force": force,
            "limit": len(ids),
        }
        answer = self._bulk("flow_runs/bulk_set_state", body)
        if not isinstance(answer, dict):
            raise ApiError(
                "POST /flow_runs/bulk_set_state answered something other than an object."
            )
        return answer

    def _bulk(self, endpoint: str, body: dict[str, Any]) -> Any:
        with self._lock:
            known = self._capabilities
        if known is not None and not known.bulk:
            raise self._unsupported(endpoint, known)  # already read: older than 3.6.16
        try:
            return self.request("POST", endpoint, body, idempotent=False)
        except NotFoundError as e:
            # 404 for the route itself (or 405 where 3.0-3.2 route POST /flow_runs/bulk_delete
            # to /flow_runs/{id}): the server lacks the endpoint.
            raise self._unsupported(endpoint, self.capabilities()) from e

    def delete_flow_run(self, run_id: str) -> DeleteResult:
        """DELETE /flow_runs/{id} (every 3.x server has it): one run, no state guard.

        A 404 means the run is already gone: ``DeleteResult(deleted=False)``, no error.
        Sent once: ``UncertainError`` when the answer is lost, ``ThrottledError`` /
        ``NotSentError`` when it was not applied; re-check before sending again."""
        try:
            self.request("DELETE", f"flow_runs/{_run_id(run_id)}", idempotent=False)
        except NotFoundError:
            return DeleteResult(str(run_id), deleted=False)
        return DeleteResult(str(run_id), deleted=True)

    def set_flow_run_state(
        self, run_id: str, state: dict[str, Any], *, force: bool
    ) -> OrchestrationResult:
        """POST /flow_runs/{id}/set_state (every 3.x server has it): Prefect's orchestration
        rules decide unless ``force``. Raises ``NotFoundError`` when the run is gone; sent
        once, with the same errors as ``delete_flow_run``."""
        answer = self.request(
            "POST",
            f"flow_runs/{_run_id(run_id)}/set_state",
            {"state": state, "force": force},
            idempotent=False,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise ApiError(
                f"POST /flow_runs/{run_id}/set_state answered something other than an orchestration result."
            )
        state_now = answer.get("state")
        details = answer.get("details")
        return OrchestrationResult(
            str(run_id),
            answer["status"],
            state_now if isinstance(state_now, dict) else None,
            details if isinstance(details, dict) else {},
        )

    def flow_run_states(self, run_id: str) -> list[dict[str, Any]]:
        """Every state a flow run has had (GET /flow_run_states/?flow_run_id=...), oldest first."""
        answer = self.request("GET", f"flow_run_states/?flow_run_id={run_id}")
        if not isinstance(answer, list) or any(not isinstance(s, dict) for s in answer):
            raise ApiError("GET /flow_run_states/ answered something other than a list of states.")
        return sorted(answer, key=lambda s: str(s.get("timestamp") or ""))


# Prefect Cloud answers one events query for at most 14 days: longer spans are split.
EVENTS_QUERY_SPAN = timedelta(days=14)


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


# What the API accepts: /filter and /count refuse `limit` above PAGE_LIMIT (422); the
# bulk endpoints take 1..BULK_LIMIT runs per call.
PAGE_LIMIT = 200
BULK_LIMIT = 50


_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+(?:\.\d+)?)D)?(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def _duration(value: Any) -> timedelta:
    """A settings duration as pydantic writes it: seconds, or ISO 8601 (``P7D``, ``PT1H30M``)."""
    if isinstance(value, (int, float)):
        return timedelta(seconds=float(value))
    match = _ISO_DURATION.match(str(value))
    if not match or str(value) == "P":
        raise ValueError(f"not a duration: {value!r}")
    return timedelta(**{k: float(v) for k, v in match.groupdict().items() if v})


def _server_date(value: str | None) -> datetime:
    if value:
        try:
            return email.utils.parsedate_to_datetime(value).astimezone(timezone.utc)
        except (TypeError, ValueError):
            pass
    return datetime.now(timezone.utc)


def _bare(path: str) -> str:
    return path.lstrip("/").split("?")[0]


_UUID = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def _run_id(run_id: str) -> str:
    """A run id safe to put in a path (a UUID): never a path of its own."""
    text = str(run_id)
    if not _UUID.match(text):
        raise ValueError(f"not a flow run id: {text!r}")
    return text


def _id_filter(ids: Sequence[str], state_types: Sequence[str] | None) -> dict[str, Any]:
    ids = [str(i) for i in ids]
    if not ids:
        raise ValueError("a bulk call needs at least one id")
    if len(ids) > BULK_LIMIT:
        raise ValueError(f"a bulk call takes at most {BULK_LIMIT} ids")
    flt: dict[str, Any] = {"id": {"any_": ids}}
    if state_types:
        flt["state"] = {"type": {"any_": sorted(set(state_types))}}
    return flt
