"""Figures that must not mislead (fast lane: built files, no server): flaky separates,
first seen is over all history, the previous window is covered by the data or says so,
the health page's rate has its own scale and short windows are bucketed by hour."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from flowsync import report_html, reports, views
from flowsync.store import Store, signatures
from tests.helpers import run_cli
from tests.policy_db import FLOW, NOW, built_db, make_db, rid, run


def test_flaky_separates_rare_failures_from_failures_that_come_and_go(tmp_path: Path) -> None:
    runs = [  # prod: every 8th run fails and the next succeeds (12.5%); dev: one failure in 60
        run(n, "FAILED" if n % 8 == 0 else "COMPLETED", n / 4, dep="prod") for n in range(1, 81)
    ] + [run(100 + n, "FAILED" if n == 30 else "COMPLETED", n / 4, dep="dev") for n in range(1, 61)]
    db = built_db(tmp_path / "flaky.duckdb", runs)
    with Store.reader(db, live=True) as store:
        frame = reports.flaky(store, reports.parse_since("30d"))
    flaky = {r["deployment_name"]: r["flaky"] for r in frame.iter_rows(named=True)}
    assert flaky == {"prod": True, "dev": False}
    with Store.reader(db, live=True) as store:
        strict = reports.flaky(store, reports.parse_since("30d"), min_rate=0.2)
    assert not any(strict["flaky"])


@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs every 30 minutes over the last three days, one in 25 failed (4%)."""
    runs = [run(n, "FAILED" if n % 25 == 0 else "COMPLETED", n / 48) for n in range(1, 144)]
    return built_db(tmp_path_factory.mktemp("figures") / "runs.duckdb", runs)


def test_health_page_rate_on_its_own_scale_and_short_windows_by_hour(
    three_days: Path, tmp_path: Path
) -> None:
    assert [report_html.rate_scale(r) for r in (None, 0.004, 0.03, 0.05, 0.07, 0.6)] == [
        0.01,
        0.01,
        0.05,
        0.05,
        0.1,
        1.0,
    ]
    page = tmp_path / "health.html"
    assert (
        run_cli(
            "report", "health", "--since", "24h", "--html", str(page), "--db", str(three_days)
        ).exit_code
        == 0
    )
    text = page.read_text()
    assert "Runs and failure rate per hour" in text
    assert "failure rate (right axis, 0 to 50%)" in text  # two runs an hour: one failure is 50%
    result = run_cli(
        "report", "health", "--since", "3d", "--html", str(page), "--db", str(three_days)
    )
    assert result.exit_code == 0
    text = page.read_text()
    assert "Runs and failure rate per day" in text
    assert "(right axis, 0 to 5%)" in text or "(right axis, 0 to 10%)" in text  # 4%, not 0..100%


def test_a_previous_window_the_data_does_not_cover_is_said(
    three_days: Path, tmp_path: Path
) -> None:
    result = run_cli("report", "failures", "--since", "2d", "-f", "csv", "--db", str(three_days))
    assert result.exit_code == 0, result.output
    assert "warning: The data starts" in result.stderr and "cover only" in result.stderr
    covered = run_cli("report", "failures", "--since", "1d", "-f", "csv", "--db", str(three_days))
    assert covered.exit_code == 0 and covered.stderr == ""
    page = tmp_path / "health.html"
    run_cli("report", "health", "--since", "2d", "--html", str(page), "--db", str(three_days))
    assert "cover only" in page.read_text()


def test_first_seen_is_over_all_history_recorded_at_pull_time(tmp_path: Path) -> None:
    runs = [run(1, "FAILED", 20), run(2, "FAILED", 0.5), run(3, "COMPLETED", 0.4)]
    db = make_db(tmp_path / "seen.duckdb", runs)
    with Store.writer(db) as store:
        store.execute("UPDATE flow_runs SET state_message = 'KeyError: ' || name")
        views.rebuild(store)
        assert signatures.record_first_seen(store) == 1
    with Store.reader(db, live=True) as store:
        row = reports.errors(store, reports.parse_since("24h")).row(0, named=True)
    assert row["runs"] == 1
    assert row["first_seen"] == NOW - timedelta(days=20)  # not the window's (or the previous one's)
    # a later pull writes an even older failure of the same signature: only it is read
    with Store.writer(db) as store:
        store.execute(
            "INSERT INTO flow_runs (id, name, flow_id, state_type, state_message, expected_start_time, "
            "synced_at) VALUES (?, 'old', ?, 'FAILED', 'KeyError: run-0009', ?, now())",
            [rid(9), FLOW, NOW - timedelta(days=30)],
        )
        assert signatures.record_first_seen(store) == 1
        assert signatures.record_first_seen(store) == 0  # nothing new since
    with Store.reader(db, live=True) as store:
        row = reports.errors(store, reports.parse_since("24h")).row(0, named=True)
    assert row["first_seen"] == NOW - timedelta(days=30)
