"""Every report figure against the server's own answers (POST /flow_runs/count).

The figures are read from a built file (``built``: no server) and compared with the
answers the server would give about its runs (``BuiltHistory.count`` / ``.filter``);
only runs deleted on a real server and pulled again need one."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from flowsync import reports
from flowsync.errors import ConfigError
from flowsync.store import Store
from harness.built import BuiltHistory
from harness.seed import delete_runs, seed
from harness.server import Server
from tests.helpers import FAILED, FINISHED, run_cli, scalar, server_count

NOW = datetime.now(timezone.utc)
WINDOW = reports.Window(NOW - timedelta(days=20), NOW)


@pytest.fixture(scope="module")
def pulled(built: BuiltHistory) -> Path:
    return built.path


def assert_rates(count: Any, frame: pl.DataFrame, key_filter: Any, window: reports.Window) -> None:
    previous = reports.Window(window.previous_start, window.since or window.until)
    assert not frame.is_empty()
    for row in frame.iter_rows(named=True):
        filters = key_filter(row)
        if filters is None:  # e.g. runs without a deployment: not a server-side filter
            continue
        assert row["failed"] == server_count(count, FAILED, window, **filters), row
        assert row["runs"] == server_count(count, FINISHED, window, **filters), row
        assert row["cancelled"] == server_count(count, ["CANCELLED"], window, **filters), row
        expected_rate = row["failed"] / row["runs"] if row["runs"] else None
        assert row["failure_rate"] == pytest.approx(expected_rate)
        if window.since is None:
            continue
        assert row["prev_failed"] == server_count(count, FAILED, previous, **filters), row
        assert row["prev_runs"] == server_count(count, FINISHED, previous, **filters), row
        if row["failure_rate"] is not None and row["prev_failure_rate"] is not None:
            assert row["failure_rate_change"] == pytest.approx(
                row["failure_rate"] - row["prev_failure_rate"]
            )


def test_failures_by_deployment_match_server(built: BuiltHistory, pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        frame = reports.failures(store, "deployment", WINDOW)
    assert {
        "deployment_id",
        "deployment_name",
        "flow_name",
        "runs",
        "failed",
        "failure_rate",
        "cancelled",
        "prev_runs",
        "prev_failed",
        "prev_failure_rate",
        "failure_rate_change",
    } <= set(frame.columns)
    seeded = set(built.deployments.values())
    assert seeded & set(frame["deployment_id"].drop_nulls()), "seeded deployments are in the report"
    assert_rates(
        built.count,
        frame,
        lambda r: (
            {"deployments": {"id": {"any_": [r["deployment_id"]]}}} if r["deployment_id"] else None
        ),
        WINDOW,
    )


def test_failures_by_flow_work_pool_and_tag_match_server(built: BuiltHistory, pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        by_flow = reports.failures(store, "flow", WINDOW)
        by_pool = reports.failures(store, "work_pool", WINDOW)
        by_tag = reports.failures(store, "tag", WINDOW)
    assert_rates(
        built.count, by_flow, lambda r: {"flows": {"id": {"any_": [r["flow_id"]]}}}, WINDOW
    )
    assert_rates(
        built.count,
        by_pool,
        lambda r: (
            {"work_pools": {"name": {"any_": [r["work_pool_name"]]}}}
            if r["work_pool_name"]
            else None
        ),
        WINDOW,
    )
    assert set(by_tag["tag"]) >= {"etl", "critical"}
    assert_rates(
        built.count, by_tag, lambda r: {"flow_runs": {"tags": {"all_": [r["tag"]]}}}, WINDOW
    )


def test_all_history_totals_match_server(built: BuiltHistory, pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        frame = reports.failures(store, "flow", reports.parse_since("all"))
    assert frame["failed"].sum() == built.count(
        {"flow_runs": {"state": {"type": {"any_": FAILED}}}}
    )
    assert frame["runs"].sum() == built.count(
        {"flow_runs": {"state": {"type": {"any_": FINISHED}}}}
    )
    assert frame["cancelled"].sum() == built.count(
        {"flow_runs": {"state": {"type": {"any_": ["CANCELLED"]}}}}
    )
    assert frame["prev_runs"].null_count() == frame.height  # no previous window for all history


def test_cli_failures_json_matches_server(built: BuiltHistory, pulled: Path) -> None:
    result = run_cli(
        "report",
        "failures",
        "--by",
        "deployment",
        "--since",
        "all",
        "--format",
        "json",
        "--db",
        str(pulled),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # only data on stdout
    assert sum(r["failed"] for r in rows) == built.count(
        {"flow_runs": {"state": {"type": {"any_": FAILED}}}}
    )
    assert {
        "deployment_id",
        "deployment_name",
        "runs",
        "failed",
        "failure_rate",
        "cancelled",
    } <= set(rows[0])


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as DuckDB's quantile_cont."""
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def test_durations_match_server_run_times(built: BuiltHistory, pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        frame = reports.durations(store, "flow", reports.parse_since("all"))
    row = frame.filter(pl.col("flow_name") == "real-sleepy").row(0, named=True)
    runs = built.filter({"flows": {"name": {"any_": ["real-sleepy"]}}})

    def ts(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    secs = [(ts(r["end_time"]) - ts(r["start_time"])).total_seconds() for r in runs]
    assert row["runs"] == len(secs) == 2
    for p in (50, 90, 95, 99):
        assert row[f"p{p}_s"] == pytest.approx(quantile(secs, p / 100), abs=1e-5)
    assert row["max_s"] == pytest.approx(max(secs), abs=1e-5)


def test_late_waiting_now_matches_server(built: BuiltHistory, pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        frame = reports.late(store, "deployment", WINDOW)
    checked = 0
    for row in frame.filter(pl.col("deployment_id").is_not_null()).iter_rows(named=True):
        server = server_count(
            built.count,
            ["SCHEDULED", "PENDING"],
            WINDOW,
            deployments={"id": {"any_": [row["deployment_id"]]}},
            flow_runs={"start_time": {"is_null_": True}},
        )
        assert row["waiting_now"] == server
        checked += server
    assert checked > 0


def test_flaky_streak_matches_server_order(built: BuiltHistory, pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        frame = reports.flaky(store, reports.parse_since("all"), last=1)
    assert not frame.is_empty()
    for row in frame.iter_rows(named=True):
        latest = built.filter(
            {
                "deployments": {"id": {"any_": [row["deployment_id"]]}},
                "flow_runs": {"state": {"type": {"any_": FINISHED}}},
                "sort": "EXPECTED_START_TIME_DESC",
                "limit": 50,
            }
        )
        streak = 0
        for run in latest:
            if run["state"]["type"] not in FAILED:
                break
            streak += 1
        assert row["failing_streak"] == streak, row
        assert row["broken"] == (streak >= 1)


def test_deleted_runs_leave_live_figures_and_stay_in_history(
    fresh_server: Server, tmp_path: Path
) -> None:
    seeded = seed(
        fresh_server.url, runs=80, flows=1, deployments_per_flow=2, days=10, seed_value=3, batch=40
    )
    db = tmp_path / "runs.duckdb"
    assert run_cli("pull", "--api-url", fresh_server.url, "--db", str(db)).exit_code == 0
    everything = reports.parse_since("all")
    with Store.reader(db, live=True) as store:
        before = reports.failures(store, "deployment", everything)
    failed_ids = [rid for rid, state in seeded.runs.items() if state in FAILED][:4]
    done_ids = [rid for rid, state in seeded.runs.items() if state == "COMPLETED"][:2]
    delete_runs(fresh_server.url, failed_ids + done_ids)
    result = run_cli("pull", "--api-url", fresh_server.url, "--db", str(db))
    assert result.exit_code == 0, result.output
    assert scalar(db, "SELECT count(*) FROM flow_runs_enriched WHERE is_deleted") == 6

    def count(body: dict[str, Any]) -> int:
        with httpx.Client(base_url=fresh_server.url + "/", timeout=60) as c:
            return int(c.post("flow_runs/count", json=body).json())

    with Store.reader(db, live=True) as store:
        live = reports.failures(store, "deployment", everything)
        history = reports.failures(store, "deployment", everything, include_deleted=True)
    assert_rates(
        count, live, lambda r: {"deployments": {"id": {"any_": [r["deployment_id"]]}}}, everything
    )
    assert live["failed"].sum() == before["failed"].sum() - len(failed_ids)
    assert live["runs"].sum() == before["runs"].sum() - len(failed_ids) - len(done_ids)
    cols = ["deployment_id", "runs", "failed", "cancelled"]
    assert (
        history.select(cols).sort("deployment_id").equals(before.select(cols).sort("deployment_id"))
    )


# -- bad input: one line on stderr, non-zero exit, no traceback ---------------------


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["failures", "--by", "colour"], "--by 'colour' is not a grouping", 2),
        (["durations", "--by", "work_queue"], "--by 'work_queue'", 2),
        (["failures", "--format", "xml"], "--format 'xml' is not an output format", 2),
        (["failures", "--since", "yesterday"], "--since 'yesterday' is not a time window", 2),
        (["late", "--since", "2999-01-01"], "is in the future", 2),
        (["flaky", "--last", "0"], "--last 0 must be at least 1", 2),
    ],
)
def test_bad_report_input(pulled: Path, args: list[str], needle: str, code: int) -> None:
    result = run_cli("report", *args, "--db", str(pulled))
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and result.stdout == ""


def test_missing_db_is_one_line(tmp_path: Path) -> None:
    result = run_cli("report", "failures", "--db", str(tmp_path / "nope.duckdb"))
    assert result.exit_code == 5
    assert "does not exist: run `flowsync pull" in result.stderr
    assert not (tmp_path / "nope.duckdb").exists()


def test_parse_since_forms() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)
    assert reports.parse_since("7d", now).since == now - timedelta(days=7)
    assert reports.parse_since("12h", now).since == now - timedelta(hours=12)
    assert reports.parse_since("2w", now).since == now - timedelta(weeks=2)
    assert reports.parse_since("2026-01-01", now).since == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert reports.parse_since("all", now).since is None
    window = reports.parse_since("1d", now)
    assert window.previous_start == now - timedelta(days=2)
    with pytest.raises(ConfigError):
        reports.parse_since("0d", now)


def test_a_subflow_counts_as_a_run_of_its_own(tmp_path: Path) -> None:
    """As docs/analysis.md defines it: a parent that failed because its subflow raised is two
    failed runs, its error signature counted twice; `NOT is_subflow` leaves the parent."""
    from tests.policy_db import built_db, rid, run

    msg = "Flow run encountered an exception: ValueError: bad row 17"
    db = built_db(tmp_path / "runs.duckdb", [run(1, "FAILED", 1), run(2, "FAILED", 1, dep=None)])
    with Store.writer(db) as store:
        store.execute("UPDATE flow_runs SET state_message = ?", [msg])
        store.execute("UPDATE flow_runs SET parent_task_run_id = ? WHERE id = ?", [rid(77), rid(2)])
    with Store.reader(db, live=True) as store:
        errors = reports.errors(store, reports.parse_since("7d"))
    assert errors["runs"].to_list() == [2]
    top_level = "SELECT count(*) FROM flow_runs_enriched WHERE is_failure AND NOT is_subflow"
    assert scalar(db, top_level) == 1


def test_a_run_deleted_while_it_waited_is_not_waiting_now_with_the_deleted_runs(
    tmp_path: Path,
) -> None:
    """`late --include-deleted` (and the health page's): a SCHEDULED run deleted on the
    server before it started (a paused deployment's late runs) was still counted waiting
    now; the live-only report, `stuck` and `runs_now` never counted it."""
    import duckdb

    from tests.policy_db import built_db, run

    db = built_db(
        tmp_path / "runs.duckdb",
        [
            run(1, state="SCHEDULED", days_ago=0.5, deleted=True),
            run(2, state="SCHEDULED", days_ago=0.5),
            run(3, state="COMPLETED", days_ago=0.5),
        ],
    )
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE flow_runs SET start_time = NULL WHERE state_type = 'SCHEDULED'")
    for include_deleted in (False, True):
        with Store.reader(db, live=True) as store:
            frame = reports.late(
                store, "deployment", reports.parse_since("1d"), include_deleted=include_deleted
            )
        assert frame["waiting_now"].sum() == 1, (include_deleted, frame)


def test_all_history_counts_a_run_scheduled_before_1970(
    built: BuiltHistory, pulled: Path, tmp_path: Path
) -> None:
    """A run expected before 1970 (which the pull reads, from 1900 on) is part of all
    history: ``--since all`` counted from 1970 and left it out of every figure."""
    from tests.helpers import copy_db

    db = copy_db(pulled, tmp_path)
    with Store.writer(db) as writer, writer.transaction():
        writer.execute(
            "UPDATE flow_runs SET expected_start_time = TIMESTAMPTZ '1965-03-01 00:00:00+00', "
            "start_time = TIMESTAMPTZ '1965-03-01 00:00:05+00', "
            "end_time = TIMESTAMPTZ '1965-03-01 00:01:00+00' "
            "WHERE id = (SELECT min(id) FROM flow_runs WHERE state_type = 'FAILED' "
            "AND deleted_at IS NULL)"
        )
    with Store.reader(db, live=True) as store:
        frame = reports.failures(store, "flow", reports.parse_since("all"))
    assert frame["failed"].sum() == built.count(
        {"flow_runs": {"state": {"type": {"any_": FAILED}}}}
    )
