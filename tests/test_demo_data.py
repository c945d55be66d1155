"""The demo's history is believable: what a newcomer sees first holds together."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flowsync import reports
from flowsync.store import Store
from harness.demo_data import BROKEN, DEPLOYMENTS, seed_demo
from tests.helpers import query, run_cli, scalar


@pytest.fixture(scope="module")
def seeded_at() -> datetime:
    """The demo's "now": the days it names (yesterday...) are of it, not of the clock when
    a test reads them (a midnight may fall between)."""
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def demo_db(
    start_server: Any, tmp_path_factory: pytest.TempPathFactory, seeded_at: datetime
) -> Path:
    tmp = tmp_path_factory.mktemp("demo")
    written = seed_demo(tmp / "prefect", days=3, now=seeded_at)
    assert written > 500
    db = tmp / "demo.duckdb"
    with start_server(home=tmp / "prefect") as server:
        result = run_cli("pull", "--api-url", server.url, "--db", str(db))
        assert result.exit_code == 0, result.output
        with server_client(server.url) as c:
            assert c.post("flow_runs/count", json={}).json() == scalar(
                db, "SELECT count(*) FROM flow_runs"
            )
    return db


def server_client(url: str):
    import httpx

    return httpx.Client(base_url=url + "/", timeout=60)


def test_times_are_consistent(demo_db: Path) -> None:
    bad = scalar(
        demo_db,
        """SELECT count(*) FROM flow_runs_enriched WHERE is_finished
                             AND NOT (expected_start_time <= start_time AND start_time < end_time)""",
    )
    assert bad == 0
    assert (
        scalar(
            demo_db,
            "SELECT count(*) FROM flow_runs_enriched WHERE is_finished AND duration_s IS NULL",
        )
        == 0
    )


def test_durations_differ_by_flow(demo_db: Path) -> None:
    p50 = dict(query(demo_db, "SELECT flow_name, p50_s FROM duration_percentiles_by_flow"))
    assert p50["refresh-dashboards"] < 90 and p50["train-model"] > 3600
    assert len({round(v, -1) for v in p50.values()}) == len(p50)


def test_lateness_is_seconds_with_a_few_outliers(demo_db: Path) -> None:
    p50, p95, late, started = query(
        demo_db,
        """SELECT quantile_cont(lateness_s, 0.5), quantile_cont(lateness_s, 0.95),
        count(*) FILTER (WHERE lateness_s > 60), count(lateness_s) FROM flow_runs_enriched""",
    )[0]
    assert 1 < p50 < 15 and p95 < 120
    assert 0 < late < 0.08 * started


def test_failures_have_several_signatures_and_one_deployment_is_broken(
    demo_db: Path, seeded_at: datetime
) -> None:
    with Store.reader(demo_db, live=True) as store:
        signatures = reports.errors(store, reports.parse_since("all"))
        unresolved = reports.unresolved(store)
    assert signatures.height >= 5
    broken = unresolved.filter(
        (unresolved["flow_name"] == BROKEN[0]) & (unresolved["deployment_name"] == BROKEN[1])
    )
    assert broken.height == 1
    row = broken.row(0, named=True)
    yesterday = (seeded_at - timedelta(days=1)).date()
    assert row["failing_since"].date() == yesterday
    assert row["failures_since_success"] >= 8
    assert "401 Unauthorized" in row["latest_message"]
    assert {d.flow for d in DEPLOYMENTS} == set(
        scalar(demo_db, "SELECT list(DISTINCT name) FROM flows")
    )


def test_duration_trend_is_the_previous_window(demo_db: Path) -> None:
    now = datetime.now(timezone.utc)
    window = reports.Window(now - timedelta(days=2), now)  # a daily run finished in each window
    previous = reports.Window(window.previous_start, window.start)
    with Store.reader(demo_db, live=True) as store:
        trend = reports.durations(store, "deployment", window, trend=True)
        before = reports.durations(store, "deployment", previous)
    prev = {r["deployment_id"]: r for r in before.iter_rows(named=True)}
    checked = 0
    for row in trend.iter_rows(named=True):
        if row["deployment_id"] in prev:
            p = prev[row["deployment_id"]]
            assert row["prev_runs"] == p["runs"]
            assert row["prev_p95_s"] == pytest.approx(p["p95_s"]) and row[
                "prev_p50_s"
            ] == pytest.approx(p["p50_s"])
            assert row["p95_change_s"] == pytest.approx(row["p95_s"] - p["p95_s"])
            checked += 1
    assert checked == len(DEPLOYMENTS)  # every demo deployment ran in both days
