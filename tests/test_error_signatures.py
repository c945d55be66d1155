"""Error signatures: the normaliser on real state messages, and every figure of
``report errors`` and ``unresolved_failures`` against the server's own answers."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flowsync import reports
from flowsync.store import Store
from harness.failing_flows import FLOW_NAMES, run_failing_flows
from harness.server import Server
from tests.helpers import SeededServer, run_cli

FAILED = ["FAILED", "CRASHED"]
FINISHED = ["COMPLETED", "FAILED", "CRASHED"]
PREFIX = "Flow run encountered an exception: "

# (state message as Prefect wrote it, normalised text). The first rows are
# copied from real @flow runs of harness/failing_flows.py; the worker and
# runtime messages from Prefect 3.8's engine and workers.
TABLE = [
    (
        PREFIX
        + "ValueError: order 1042 for customer 3d0f34c3-1437-4e01-a908-bfc2c8bd2f2f failed after 148.86s",
        PREFIX + "ValueError: order <n> for customer <uuid> failed after <n>s",
    ),
    (PREFIX + "KeyError: 'customer_id'", PREFIX + "KeyError: <str>"),
    (
        PREFIX
        + "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/flowsync-missing-4e9ac503/2026-01-04/orders.csv'",
        PREFIX + "FileNotFoundError: [Errno <n>] No such file or directory: <str>",
    ),
    (
        PREFIX
        + "RuntimeError: GET https://api.example.com/v1/orders/77 returned 503 at 2026-11-29T22:32:42.386300+00:00 "
        "(request 0xbc06f0dca9f6)",
        PREFIX + "RuntimeError: GET <url> returned <n> at <time> (request <hex>)",
    ),
    ("Flow run exceeded timeout of 1.0 second(s)", "Flow run exceeded timeout of <n> second(s)"),
    (
        "Execution was aborted by Python system exit call.",
        "Execution was aborted by Python system exit call.",
    ),
    (
        "Flow run process exited with non-zero status code 137.",
        "Flow run process exited with non-zero status code <n>.",
    ),
    (
        "Execution was cancelled by the runtime environment.",
        "Execution was cancelled by the runtime environment.",
    ),
    # paths without quotes, hex ids, digits inside words, unix times, a Windows path, apostrophes
    (
        "OSError: could not open /var/lib/etl/run-8812/out.db: disk full on worker7",
        "OSError: could not open <path>: disk full on worker<n>",
    ),
    (
        "checksum deadbeef12 != cafe0042ab for batch 2026-03-01 12:00:00 UTC",
        "checksum <hex> != <hex> for batch <time>",
    ),
    (
        r"PermissionError: C:\data\in\file.csv is locked; job doesn't retry",
        "PermissionError: <path> is locked; job doesn't retry",
    ),
    ('ValueError: column "amount" has 3 nulls', "ValueError: column <str> has <n> nulls"),
    # only the first line counts; whitespace collapses; nothing is '(no message)'
    (
        "RuntimeError: step 4 failed\nTraceback (most recent call last):\n  File x.py",
        "RuntimeError: step <n> failed",
    ),
    ("  too    many   spaces 12  ", "too many spaces <n>"),
    # a message that opens with a line break is its first line of text, not '(no message)'
    ("\nValueError: x", "ValueError: x"),
    (" \r\n\tValueError: y\nmore", "ValueError: y"),
    ("", "(no message)"),
    (None, "(no message)"),
    # HTTP statuses stay: a 401 is not a 500 (httpx, requests, aiohttp, plain text)
    (
        "PrefectHTTPStatusError: Client error '401 Unauthorized' for url 'http://127.0.0.1:4200/api/flows/'",
        "PrefectHTTPStatusError: Client error HTTP 401 Unauthorized for url <str>",
    ),
    (
        "HTTPStatusError: Server error '500 Internal Server Error' for url 'https://x.example/v1'",
        "HTTPStatusError: Server error HTTP 500 Internal Server Error for url <str>",
    ),
    (
        "HTTPError: 503 Server Error: Service Unavailable for url: https://x.example/a/7",
        "HTTPError: 503 Server Error: Service Unavailable for url: <url>",
    ),
    (
        "ClientResponseError: 429, message='Too Many Requests', url='https://x.example'",
        "ClientResponseError: 429, message=<str>, url=<str>",
    ),
    (
        "upstream answered HTTP/1.1 502 after 3 tries",
        "upstream answered HTTP/<n> 502 after <n> tries",
    ),
    ("request failed: status_code=404 id=77", "request failed: status_code=404 id=<n>"),
    ("took 500 ms for 404 rows", "took <n> ms for <n> rows"),
]


@pytest.fixture
def empty_store(tmp_path: Path) -> Any:
    with Store.writer(tmp_path / "empty.duckdb") as store:
        from flowsync import views

        views.rebuild(store)
        yield store


def test_normaliser_table(empty_store: Store) -> None:
    frame = reports.error_signature(empty_store, [m for m, _ in TABLE])
    assert frame["error_text"].to_list() == [expected for _, expected in TABLE]
    assert all(len(s) == 8 for s in frame["signature"])
    # the short hash is the md5 of the text: stable across machines and DuckDB versions
    assert (
        frame.row(1, named=True)["signature"] == hashlib.md5(TABLE[1][1].encode()).hexdigest()[:8]
    )


@pytest.fixture(scope="module")
def failing(start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("failing")
    with start_server(home=home / "prefect") as server:
        ids = run_failing_flows(server.url, server.home)
        db = home / "runs.duckdb"
        result = run_cli("pull", "--api-url", server.url, "--db", str(db))
        assert result.exit_code == 0, result.output
        yield server, ids, db


def _server_runs(server: Server, flow: str) -> list[dict[str, Any]]:
    import httpx

    with httpx.Client(base_url=server.url + "/", timeout=60) as c:
        body = {
            "flows": {"name": {"any_": [flow]}},
            "flow_runs": {"state": {"type": {"any_": FAILED}}},
        }
        runs = c.post("flow_runs/filter", json=body).json()
        assert c.post("flow_runs/count", json=body).json() == len(runs)
    return list(runs)


def test_real_failures_group_by_signature(failing: Any) -> None:
    server, _ids, db = failing
    with Store.reader(db, live=True) as store:
        frame = reports.errors(store, reports.parse_since("all"))
        normalised = reports.error_signature(
            store, [r["state"]["message"] for f in FLOW_NAMES for r in _server_runs(server, f)]
        )
    assert frame.height == len(FLOW_NAMES), frame.select("error_text").to_series().to_list()
    assert frame["runs"].sum() == sum(len(_server_runs(server, f)) for f in FLOW_NAMES)
    texts = dict(TABLE)
    for flow in FLOW_NAMES:
        runs = _server_runs(server, flow)
        assert len(runs) == 2, flow  # each failure happens twice, with different data
        row = frame.filter(frame["flow_name"] == flow).row(0, named=True)
        assert row["runs"] == 2 and row["flows"] == 1 and row["deployments"] == 0
        assert row["share"] == pytest.approx(2 / frame["runs"].sum())
        starts = sorted(
            datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs
        )
        assert (row["first_seen"], row["last_seen"]) == (starts[0], starts[-1])
        by_id = {r["id"]: r for r in runs}
        assert row["example_run_id"] in by_id
        assert row["example_message"] == by_id[row["example_run_id"]]["state"]["message"]
        assert row["example_state_type"] == by_id[row["example_run_id"]]["state"]["type"]
        assert row["prev_runs"] is None  # all history has no previous window
        if row["example_message"] in texts:
            assert row["error_text"] == texts[row["example_message"]]
    # the two runs of a flow normalise to one text; different failures to different texts
    assert normalised["signature"].n_unique() == len(FLOW_NAMES)
    crash = frame.filter(frame["flow_name"] == "worker-crash").row(0, named=True)
    assert crash["example_state_type"] == "CRASHED"


def test_errors_window_and_previous_window_match_server(failing: Any) -> None:
    server, _ids, db = failing
    runs = sorted(
        (r for f in FLOW_NAMES for r in _server_runs(server, f)),
        key=lambda r: r["expected_start_time"],
    )
    times = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
    since = times[len(times) // 2]
    window = reports.Window(
        since, times[-1] + (times[-1] - since)
    )  # previous window covers the first half
    with Store.reader(db, live=True) as store:
        frame = reports.errors(store, window)
    for row in frame.iter_rows(named=True):
        mine = [
            t for r, t in zip(runs, times) if _flow_name(server, r["flow_id"]) == row["flow_name"]
        ]
        assert row["runs"] == sum(since <= t < window.until for t in mine)
        assert row["prev_runs"] == sum(window.previous_start <= t < since for t in mine)
        assert row["runs_change"] == row["runs"] - row["prev_runs"]
    assert frame["runs"].sum() == sum(since <= t < window.until for t in times)


_FLOW_NAMES: dict[str, str] = {}


def _flow_name(server: Server, flow_id: str) -> str:
    if flow_id not in _FLOW_NAMES:
        import httpx

        _FLOW_NAMES[flow_id] = httpx.get(f"{server.url}/flows/{flow_id}", timeout=30).json()["name"]
    return _FLOW_NAMES[flow_id]


def test_report_errors_cli(failing: Any) -> None:
    _server, ids, db = failing
    result = run_cli("report", "errors", "--since", "all", "--format", "json", "--db", str(db))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {
        "signature",
        "error_text",
        "runs",
        "example_run_id",
        "example_message",
        "first_seen",
    } <= set(rows[0])
    assert any(r["example_run_id"] in ids["load-orders"] for r in rows)
    table = run_cli("report", "errors", "--since", "all", "--format", "table", "--db", str(db))
    assert table.exit_code == 0, table.output
    assert "load-orders" in table.stdout and "<uuid>" in table.stdout
    assert ids["load-orders"][0] not in table.stdout  # ids only in machine formats or with --ids
    with_ids = run_cli(
        "report", "errors", "--since", "all", "--format", "table", "--ids", "--db", str(db)
    )
    assert any(i in with_ids.stdout for i in ids["load-orders"])


# -- unresolved failures ---------------------------------------------------------


def test_unresolved_failures_match_server(prefect: SeededServer, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    assert run_cli("pull", "--api-url", prefect.url, "--db", str(db)).exit_code == 0
    with Store.reader(db, live=True) as store:
        frame = reports.unresolved(store)
    unresolved = {r["deployment_id"]: r for r in frame.iter_rows(named=True)}
    checked = 0
    with prefect.api() as c:
        for dep_id in prefect.seeded.deployments.values():
            latest = c.post(
                "flow_runs/filter",
                json={
                    "deployments": {"id": {"any_": [dep_id]}},
                    "flow_runs": {"state": {"type": {"any_": FINISHED}}},
                    "sort": "EXPECTED_START_TIME_DESC",
                    "limit": 200,
                },
            ).json()
            failed = []
            for run in latest:
                if run["state"]["type"] not in FAILED:
                    break
                failed.append(run)
            if not failed:
                assert dep_id not in unresolved
                continue
            row = unresolved[dep_id]
            checked += 1
            assert row["failures_since_success"] == len(failed)
            assert row["failing_since"] == datetime.fromisoformat(
                failed[-1]["expected_start_time"].replace("Z", "+00:00")
            )
            assert row["latest_failure_run_id"] == failed[0]["id"]
            assert row["latest_state_type"] == failed[0]["state"]["type"]
            success = next((r for r in latest if r["state"]["type"] == "COMPLETED"), None)
            if success is not None:
                assert row["last_success_at"] == datetime.fromisoformat(
                    success["expected_start_time"].replace("Z", "+00:00")
                )
    assert checked == len(unresolved) - sum(
        1 for k in unresolved if k not in prefect.seeded.deployments.values()
    )
    assert checked > 0
