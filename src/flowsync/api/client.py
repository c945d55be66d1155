"""One HTTP client for one Prefect API: auth, retries, error wrapping, request counts.

Owns: every request flowsync makes. Read-only calls retry 429 (honouring
``Retry-After``), 500/502/503/504, transport errors and unreadable bodies, with
bounded exponential backoff and full jitter. Calls that change data (the bulk
endpoints) are never resent blindly: they retry only what proves the server did
not act (429, a connection that was never made) and raise ``UncertainError`` for
anything that may have been applied (5xx, a dropped connection, a timeout, an
unreadable body), so the caller can read the server's state first. Everything
else becomes ``ApiError``/``AuthError`` with one line that names the URL. Must not: print,
touch the store, or let the API key out of the ``Authorization`` header.
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
from flowsync.config import ApiSettings
from flowsync.errors import ApiError, AuthError, UncertainError

# Read-only calls (filters, counts, history) are safe to repeat after any of these: the
# SQLite-backed server answers 500/503 for "database is locked" under write load.
READ_RETRY_STATUS = {429, 500, 502, 503, 504}
# A call that changes data is repeated only when the server certainly did not act on it.
WRITE_RETRY_STATUS = {429}
TRANSPORT_ERRORS = (httpx.TransportError,)
# The request never reached the server: safe to send again even when it changes data.
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
    ) -> None:
        self.settings = settings
        self.retry = retry or RetryPolicy()
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
        ``UncertainError`` at once instead of being retried."""
        attempts = attempts or self.retry.attempts
        url = path if path.startswith("http") else path.lstrip("/")
        if url.startswith("http") and urlsplit(url).netloc != self._host:
            # Never send credentials to another host, e.g. via a next-page link.
            raise ApiError(
                f"Prefect API returned a link to another host ({urlsplit(url).netloc}); refusing to follow it."
            )
        retry_status = READ_RETRY_STATUS if idempotent else WRITE_RETRY_STATUS
        where = (
            f"{self.settings.display_url}/{path.lstrip('/')}"
            if not path.startswith("http")
            else path
        )
        last_problem = ""
        for attempt in range(attempts):
            self._count(attempt > 0)
            retry_after: float | None = None
            try:
                response = self._http.request(method, url, json=body)
            except TRANSPORT_ERRORS as e:
                last_problem = f"{type(e).__name__}: {_short(str(e)) or 'connection failed'}"
                if not idempotent and not isinstance(e, NOT_SENT_ERRORS):
                    raise self._uncertain(method, path, last_problem) from e
            else:
                status = response.status_code
                if status in (401, 403):
                    raise AuthError(
                        f"Prefect API at {self.settings.display_url} refused the request "
                        f"({status} {response.reason_phrase}): check PREFECT_API_KEY / "
                        "PREFECT_API_AUTH_STRING or --api-key."
                    )
                if status in retry_status:
                    retry_after = _retry_after(response) if status == 429 else None
                    last_problem = f"HTTP {status} {_short(response.text, 80)}"
                elif status >= 500 and not idempotent:
                    raise self._uncertain(
                        method, path, f"HTTP {status} {_short(response.text, 80)}"
                    )
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
                            raise self._uncertain(method, path, last_problem) from None
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

    def pause(self, attempt: int) -> None:
        """Sleep as the retry policy would before try ``attempt + 1`` (for callers that resend themselves)."""
        self._sleep(self.retry.delay(attempt, None))

    def _uncertain(self, method: str, path: str, problem: str) -> UncertainError:
        return UncertainError(
            f"Prefect API at {self.settings.display_url}: {method} /{path.lstrip('/').split('?')[0]} "
            f"failed in transit ({problem}); the server may have applied it.",
            problem,
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
        try:
            answer = self.request("GET", "admin/version")
        except ApiError:
            return None
        return str(answer) if answer is not None else None

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

        One request: ``/events/count-by/resource`` groups events by resource id.
        """
        body = {
            "filter": {
                "occurred": {"since": since.isoformat(), "until": until.isoformat()},
                "event": {"prefix": ["prefect.flow-run."]},
                "any_resource": {"id_prefix": ["prefect.flow-run."]},
            },
            "time_unit": "day",
            "time_interval": 1.0,
        }
        answer = self.request("POST", "events/count-by/resource", body)
        if not isinstance(answer, list):
            raise ApiError("POST /events/count-by/resource answered something other than a list.")
        changed: dict[str, datetime] = {}
        prefix = "prefect.flow-run."
        for row in answer:
            value = str(row.get("value", ""))
            if value.startswith(prefix):
                end_time = datetime.fromisoformat(str(row["end_time"]).replace("Z", "+00:00"))
                changed[value[len(prefix) :]] = end_time
        return changed

    def flow_run_event_before(self, when: datetime) -> datetime | None:
        """When the newest flow-run state event at or before ``when`` occurred, or None if the server holds none.

        Prefect trims events oldest first (retention, ``db_vacuum``): one held at
        or before ``when`` proves every later one is still held.
        """
        body = {
            "filter": {
                "occurred": {"since": "1970-01-01T00:00:00+00:00", "until": when.isoformat()},
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

    def server_now(self) -> datetime:
        """The server's clock (from the Date header), so cursors never depend on ours."""
        _answer, _text, headers = self.request("GET", "health", attempts=2, raw=True)
        return _server_date(headers.get("date"))

    def bulk_delete(self, ids: Sequence[str], state_types: Sequence[str] | None) -> dict[str, Any]:
        """POST /flow_runs/bulk_delete for exactly these ids (never an open filter).

        Raises ``UncertainError`` when the answer is lost: read the runs before resending."""
        body = {"flow_runs": _id_filter(ids, state_types), "limit": len(ids)}
        answer = self.request("POST", "flow_runs/bulk_delete", body, idempotent=False)
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
        answer = self.request("POST", "flow_runs/bulk_set_state", body, idempotent=False)
        if not isinstance(answer, dict):
            raise ApiError(
                "POST /flow_runs/bulk_set_state answered something other than an object."
            )
        return answer

    def flow_run_states(self, run_id: str) -> list[dict[str, Any]]:
        """Every state a flow run has had (GET /flow_run_states/?flow_run_id=...), oldest first."""
        answer = self.request("GET", f"flow_run_states/?flow_run_id={run_id}")
        if not isinstance(answer, list) or any(not isinstance(s, dict) for s in answer):
            raise ApiError("GET /flow_run_states/ answered something other than a list of states.")
        return sorted(answer, key=lambda s: str(s.get("timestamp") or ""))


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
