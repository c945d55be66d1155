"""Alerts that hold: the OpenMetrics figures an alert reads (fast lane: built files, no server).

Freshness comes from the live sync log (a pull that changes nothing publishes no
snapshot), all history does not count from 1970, and runs running, waiting and late
now are gauges. The alert rules and the Grafana dashboard in docs/monitoring/ only
use metric names the file has.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from flowsync import views
from flowsync.store import Store
from flowsync.store.snapshot import publish
from flowsync.store.sync_log import finish_sync_run, start_sync_run
from tests.helpers import run_cli
from tests.policy_db import DEPLOYMENTS, FLOW, NOW, make_db, rid, run

MONITORING = Path(__file__).resolve().parent.parent / "docs" / "monitoring"


def pull_ok(store: Store, finished: datetime) -> None:
    pull = start_sync_run(store, "http://127.0.0.1:4200/api")
    finish_sync_run(store, pull, status="ok", mode="incremental", finished_at=finished)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file whose last pull changed nothing: its snapshot is older than its sync log."""
    db = make_db(
        tmp_path_factory.mktemp("alerts") / "runs.duckdb",
        [run(1, "FAILED", 3), run(2, "COMPLETED", 2), run(3, "RUNNING", 0.1)],
    )
    with Store.writer(db) as store:
        for n, minutes in ((4, 120), (5, 10)):  # due 2 h and 10 min ago, not started
            store.execute(
                """INSERT INTO flow_runs (id, name, flow_id, deployment_id, state_type, state_name,
                    expected_start_time, created, synced_at)
                VALUES (?, 'waiting', ?, ?, 'SCHEDULED', 'Late', ?, ?, now())""",
                [rid(n), FLOW, DEPLOYMENTS["prod"], NOW - timedelta(minutes=minutes), NOW],
            )
        views.rebuild(store)
        pull_ok(store, NOW - timedelta(hours=5))
        publish(store, pull_id=None)
        pull_ok(store, NOW - timedelta(minutes=1))  # changed nothing: no snapshot published
    return db


def metrics(db: Path, *args: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    result = run_cli("report", "health", "--format", "openmetrics", "--db", str(db), *args)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert {f.name for f in prometheus_families(text)}  # the textfile collector's format too
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_freshness_comes_from_the_live_sync_log(quiet: Path) -> None:
    [(_, value)] = metrics(quiet)["flowsync_last_pull_success_timestamp_seconds"]
    assert value == pytest.approx((NOW - timedelta(minutes=1)).timestamp(), abs=1)


def test_all_history_counts_from_the_earliest_run(quiet: Path) -> None:
    earliest = NOW - timedelta(days=3)  # run 1 (tests/policy_db.py's NOW)
    before = datetime.now(timezone.utc)
    [(_, value)] = metrics(quiet, "--since", "all")["flowsync_window_seconds"]
    after = datetime.now(timezone.utc)
    assert (
        (before - earliest).total_seconds() - 1 <= value <= (after - earliest).total_seconds() + 1
    )
    [(_, value)] = metrics(quiet, "--since", "2d")["flowsync_window_seconds"]
    assert value == pytest.approx(2 * 86400, abs=5)


def test_runs_running_waiting_and_late_now(quiet: Path) -> None:
    found = metrics(quiet, "--late-after", "3600")
    prod = {"flow": "etl", "deployment": "prod", "deployment_id": DEPLOYMENTS["prod"]}
    assert found["flowsync_runs_running"] == [(prod, 1.0)]
    assert found["flowsync_runs_waiting"] == [(prod, 2.0)]
    assert found["flowsync_runs_late"] == [(prod, 1.0)]  # 2 h > --late-after 1 h; 10 min is not
    assert metrics(quiet)["flowsync_runs_late"] == [(prod, 2.0)]  # both > the default 60 s


def _names_used(text: str) -> set[str]:
    return set(re.findall(r"\bflowsync_[a-z0-9_]+", text))


def test_alert_rules_and_dashboard_use_only_metrics_the_file_has(quiet: Path) -> None:
    known = set(metrics(quiet))
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs and all(
        r.get("alert") and r.get("annotations") for g in rules["groups"] for r in g["rules"]
    )
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    targets = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert targets
    used = set().union(*(_names_used(e) for e in [*exprs, *targets]))
    assert used and used <= known, used - known
    assert "flowsync_last_pull_success_timestamp_seconds" in used
