"""Faults a real server won't produce on demand, through an httpx MockTransport in front of it.

The transport forwards to the real test server except where a test injects a
fault: 429 with Retry-After, bursts of 500/503, truncated or non-JSON bodies,
connection resets. The pull must retry, or fail with one clear line and leave
the file consistent.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync.api import PrefectClient, RetryPolicy
from flowsync.config import ApiSettings
from flowsync.errors import ApiError, AuthError
from flowsync.store import Store
from flowsync.sync import pull
from tests.helpers import Fault, SeededServer, query, scalar
from tests.helpers import forwarding as forward_to_server
from tests.server_truth import assert_matches_server

pytestmark = pytest.mark.backends("sqlite", "postgres")


def forwarding(url: str, fault: Fault) -> tuple[httpx.MockTransport, list[float]]:
    return forward_to_server(fault), []


def client_for(
    url: str, transport: httpx.BaseTransport, sleeps: list[float], attempts: int = 5
) -> PrefectClient:
    return PrefectClient(
        ApiSettings(url=url),
        transport=transport,
        retry=RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.05),
        sleep=sleeps.append,
    )


def is_runs_page(request: httpx.Request) -> bool:
    return request.url.path.endswith("/flow_runs/filter")


def failed_pull(
    url: str, db: Path, fault: Fault, error: type[ApiError] = ApiError
) -> tuple[ApiError, list[float]]:
    """A pull into ``db`` through ``fault`` that must raise ``error``: what it raised, and the
    waits it slept."""
    transport, sleeps = forwarding(url, fault)
    with (
        Store.writer(db) as store,
        client_for(url, transport, sleeps) as client,
        pytest.raises(error) as raised,
    ):
        pull(client, store)
    return raised.value, sleeps


def test_429_retry_after_is_honoured(prefect: SeededServer, db_path: Path) -> None:
    hits = itertools.count()

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        if is_runs_page(request) and next(hits) in (0, 3):
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow down"})
        return None

    transport, sleeps = forwarding(prefect.url, fault)
    with Store.writer(db_path) as store, client_for(prefect.url, transport, sleeps) as client:
        result = pull(client, store)
    assert sleeps.count(7.0) == 2
    assert result.retries == 2
    assert_matches_server(db_path, prefect.url)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_bursts_of_server_errors_are_retried(
    prefect: SeededServer, db_path: Path, status: int
) -> None:
    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        return httpx.Response(status, text="database is locked") if n % 3 == 1 else None

    transport, sleeps = forwarding(prefect.url, fault)
    with Store.writer(db_path) as store, client_for(prefect.url, transport, sleeps) as client:
        pull(client, store)
    assert sleeps, "expected retries"
    assert_matches_server(db_path, prefect.url)


def test_truncated_and_non_json_bodies_and_resets_are_retried(
    prefect: SeededServer, db_path: Path
) -> None:
    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        if not is_runs_page(request):
            return None
        kind = n % 4
        if kind == 1:
            return httpx.Response(200, content=b'[{"id": "abc", "name": "trunc')
        if kind == 2:
            return httpx.Response(200, content=b"<html>proxy error</html>")
        if kind == 3:
            raise httpx.ReadError("connection reset by peer", request=request)
        return None

    transport, sleeps = forwarding(prefect.url, fault)
    with (
        Store.writer(db_path) as store,
        client_for(prefect.url, transport, sleeps, attempts=6) as client,
    ):
        pull(client, store)
    assert_matches_server(db_path, prefect.url)


def test_persistent_failure_fails_clearly_and_keeps_the_file_consistent(
    prefect: SeededServer, db_path: Path
) -> None:
    pages = itertools.count()

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        # the first few pages succeed, then the server stays down
        if is_runs_page(request) and next(pages) >= 3:
            return httpx.Response(503, text="Service Unavailable")
        return None

    message = str(failed_pull(prefect.url, db_path, fault)[0])
    assert prefect.url in message and "after 5 attempts" in message and "\n" not in message
    assert query(db_path, "SELECT status, error IS NOT NULL FROM sync_runs") == [("failed", True)]
    partial = scalar(db_path, "SELECT count(*) FROM flow_runs")
    assert 0 < partial < prefect.count()
    assert scalar(db_path, "SELECT count(*) - count(DISTINCT id) FROM flow_runs") == 0
    # the next pull, with the server back, resumes and completes
    with Store.writer(db_path) as store, PrefectClient(ApiSettings(url=prefect.url)) as client:
        result = pull(client, store)
    assert result.mode == "full" and "resuming" in result.reason
    assert_matches_server(db_path, prefect.url)


def test_a_first_pull_stopped_in_the_catalog_is_recorded_full(
    prefect: SeededServer, db_path: Path
) -> None:
    """The first pull of a file is a full one from its first request: stopped while reading
    flows, its ``sync_runs`` row says so (it said ``incremental``)."""

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.url.path.endswith("/flows/filter"):
            return httpx.Response(401, json={"detail": "no"})
        return None

    failed_pull(prefect.url, db_path, fault, AuthError)
    assert query(db_path, "SELECT status, mode FROM sync_runs") == [("failed", "full")]


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        (
            "flow_runs/filter",
            [{"id": "6a0e2f4c-3f3a-4b8e-9c1d-2b9f0e1a7c55", "expected_start_time": "soon"}],
        ),
        ("flow_runs/history", [{"interval_end": "later", "states": [{"count_runs": 10**9}]}]),
        ("flow_runs/history", [1]),
    ],
    ids=["filter-time", "history-time", "history-rows"],
)
@pytest.mark.backends("sqlite")  # the answers are the proxy's: the backend changes nothing
def test_a_time_or_row_a_pull_cannot_read_is_one_api_error_naming_it(
    prefect: SeededServer, db_path: Path, path: str, answer: Any
) -> None:
    """The first pull's reads of the runs' span (the first run by expected start, the history
    it cuts its parts by) answered with a time that is none or a row that is no object (a
    proxy rewriting answers, a newer server's shape): one ``ApiError`` naming the endpoint,
    not a ValueError or AttributeError with a traceback; the pull recorded failed."""

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        body = json.loads(request.content) if request.content else {}
        if request.url.path.endswith(path) and (
            path != "flow_runs/filter" or body.get("limit") == 1
        ):
            return httpx.Response(200, json=answer)
        return None

    message = str(failed_pull(prefect.url, db_path, fault)[0])
    assert f"POST /{path}" in message and "\n" not in message, message
    assert query(db_path, "SELECT status FROM sync_runs") == [("failed",)]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_fail_at_once(prefect: SeededServer, db_path: Path, status: int) -> None:
    def refused(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(status, json={"detail": "no"})

    error, sleeps = failed_pull(prefect.url, db_path, refused, AuthError)
    assert not sleeps
    assert str(status) in str(error) and "PREFECT_API_KEY" in str(error)


def test_api_key_goes_only_in_the_header(prefect: SeededServer, db_path: Path) -> None:
    from pydantic import SecretStr

    seen: list[str] = []

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        seen.append(request.headers.get("authorization", ""))
        assert b"sk-test-secret" not in request.content
        return None

    transport, _ = forwarding(prefect.url, fault)
    settings = ApiSettings(url=prefect.url, api_key=SecretStr("sk-test-secret"))
    with Store.writer(db_path) as store, PrefectClient(settings, transport=transport) as client:
        pull(client, store)
    assert set(seen) == {"Bearer sk-test-secret"}
    dump = db_path.read_bytes()
    assert b"sk-test-secret" not in dump


def test_a_429s_retry_after_holds_every_request_of_the_pull_not_only_the_one_refused(
    prefect: SeededServer, db_path: Path
) -> None:
    """Prefect Cloud's rate limit is the account's: a 429 with ``Retry-After`` says that no
    request of this client is served before then. With two requests in flight (the full
    walk's segments, ``--concurrency 2``) the refused one waited, and the other thread went
    on sending into the window: each answered 429 on Cloud (as here), counted against the
    quota the production workers share. Every request waits out the window, then the pull
    completes."""
    import threading
    import time

    from flowsync.sync import PullOptions

    window = 2.0
    lock = threading.Lock()
    until: list[float] = []  # when the window the server announced ends
    walked = itertools.count()
    refused: list[str] = []

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        with lock:
            now = time.monotonic()
            inside = bool(until) and now < until[0]
            first = not until and is_runs_page(request) and b"EXPECTED_START" in request.content
            if first and next(walked) == 3:  # the walk's fourth page: both segments under way
                until.append(now + window)
                return httpx.Response(429, headers={"Retry-After": f"{window:g}"})
        if inside:  # what the server does with a request sent inside its window
            refused.append(request.url.path)
            return httpx.Response(429, headers={"Retry-After": "1"})
        return None

    options = PullOptions(concurrency=2, page_size=20, segment_rows=100)
    with (
        Store.writer(db_path) as store,
        PrefectClient(ApiSettings(url=prefect.url), transport=forward_to_server(fault)) as client,
    ):
        result = pull(client, store, options)
    assert until, "the walk's fourth page was never asked"
    assert refused == [], f"{len(refused)} requests sent inside the server's Retry-After window"
    assert result.retries == 1
    assert_matches_server(db_path, prefect.url)
