"""Runs a server ages out are history flowsync keeps, told apart from runs someone deleted.

The ``deleted_runs`` view classifies by what the file knows (policy_actions, the
retention the pull recorded); ``run_retention`` reads it from a real server's
settings (Prefect's db_vacuum), or ``FLOWSYNC_RUN_RETENTION_DAYS`` (Prefect Cloud).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync import views
from flowsync.api import PrefectClient
from flowsync.config import ApiSettings
from flowsync.store import Store
from harness.seed import delete_runs, seed
from harness.server import Server
from tests.helpers import query, run_cli
from tests.policy_db import make_db, rid, run


def set_retention(db: Path, value: dict[str, Any] | None) -> dict[str, str]:
    with Store.writer(db) as store:
        store.execute("DELETE FROM sync_state WHERE key = 'run_retention'")
        if value is not None:
            store.execute(
                "INSERT INTO sync_state VALUES ('run_retention', CAST(? AS JSON), now())",
                [json.dumps(value)],
            )
        views.rebuild(store)
    return {str(i): how for i, how in query(db, "SELECT id, deleted_how FROM deleted_runs")}


def test_deleted_runs_say_how_they_went(tmp_path: Path) -> None:
    db = make_db(
        tmp_path / "runs.duckdb",
        [
            run(1, days_ago=40, deleted=True),  # older than 14 days when it went
            run(2, days_ago=2, deleted=True),  # young: someone deleted it
            run(3, days_ago=40, deleted=True),  # a policy deleted it
            run(4, days_ago=40),  # still on the server
        ],
    )
    with Store.writer(db) as store:
        store.execute(
            """INSERT INTO policy_actions (apply_id, batch, sent_at, policy_sha256, rule, action,
                   flow_run_id, state_type_before, outcome)
               VALUES ('a1', 1, now(), 'x', 'purge', 'delete', ?, 'COMPLETED', 'deleted')""",
            [rid(3)],
        )
    two_weeks = {"known": True, "seconds": 14 * 86400.0, "source": "FLOWSYNC_RUN_RETENTION_DAYS"}
    assert set_retention(db, two_weeks) == {
        rid(1): "aged_out",
        rid(2): "deleted",
        rid(3): "policy",
    }
    never = {"known": True, "seconds": None, "source": "db_vacuum does not delete flow runs"}
    assert set_retention(db, never) == {rid(1): "deleted", rid(2): "deleted", rid(3): "policy"}
    cloud = {"known": False, "seconds": None, "source": "the server does not expose its settings"}
    assert set_retention(db, cloud) == {rid(1): "unknown", rid(2): "unknown", rid(3): "policy"}
    assert set_retention(db, None)[rid(1)] == "unknown"  # nothing recorded yet
    # a value of another shape (a newer flowsync's, or edited by hand): not known, and the
    # view still reads (it failed: "Could not convert string '14d' to DOUBLE")
    for other in (
        {"known": True, "seconds": "14d"},
        {"known": "maybe", "seconds": 86400},
        {"known": True, "seconds": 1e300},  # a double no interval holds (OutOfRangeException)
        {"known": True, "seconds": "nan"},
        {"known": True, "seconds": -1},  # every deleted run would read aged out
    ):
        assert set_retention(db, other) == {rid(1): "unknown", rid(2): "unknown", rid(3): "policy"}


def test_run_retention_from_the_servers_settings(tmp_path: Path, start_server: Any) -> None:
    env = {
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": "7200",
    }
    with (
        start_server(home=tmp_path / "vacuum", extra_env=env) as server,
        PrefectClient(ApiSettings(url=server.url)) as c,
    ):
        retention = c.run_retention()
    assert retention.known and retention.period == timedelta(hours=2)
    with (
        start_server(home=tmp_path / "plain") as server,
        PrefectClient(ApiSettings(url=server.url)) as c,
    ):
        plain = c.run_retention()
    assert plain.known and plain.period is None  # the default vacuums events only


def test_cloud_retention_is_unknown_unless_configured() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "Not Found"}))
    with PrefectClient(ApiSettings(url="http://127.0.0.1:9/api"), transport=transport) as c:
        retention = c.run_retention()
    assert (retention.known, retention.period) == (False, None)


def test_a_busy_server_keeps_the_retention_recorded_not_unknown(tmp_path: Path) -> None:
    """The settings read answers 429 on every try (a busy server, a rate limit): the retention
    an earlier pull recorded stays, so deleted runs stay told apart; it is not replaced by
    "the server does not expose its settings", which would make them all "unknown"."""
    from flowsync.api import RetryPolicy
    from flowsync.sync import identity

    db = make_db(tmp_path / "runs.duckdb", [run(1, days_ago=40, deleted=True)])
    two_weeks = {"known": True, "seconds": 14 * 86400.0, "source": "db_vacuum"}
    assert set_retention(db, two_weeks) == {rid(1): "aged_out"}
    asked: list[str] = []

    def busy(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "slow down"})

    with (
        Store.writer(db) as store,
        PrefectClient(
            ApiSettings(url="http://127.0.0.1:9/api"),
            transport=httpx.MockTransport(busy),
            retry=RetryPolicy(attempts=3),
            sleep=lambda s: None,
        ) as client,
    ):
        assert identity.record_retention(client, store) is None
        views.rebuild(store)
    assert asked and all(path.endswith("/admin/settings") for path in asked)
    assert {str(i): how for i, how in query(db, "SELECT id, deleted_how FROM deleted_runs")} == {
        rid(1): "aged_out"
    }


def test_a_pull_that_finds_runs_gone_records_the_retention(
    fresh_server: Server, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = seed(fresh_server.url, runs=60, flows=1, deployments_per_flow=1, days=20, seed_value=4)
    assert run_cli("pull", "--api-url", fresh_server.url, "--db", str(db_path)).exit_code == 0
    now = datetime.now(timezone.utc)
    starts = {
        str(i): t
        for i, t in query(
            db_path, "SELECT id, expected_start_time FROM flow_runs WHERE state_type = 'SCHEDULED'"
        )
    }
    old = next(i for i, t in starts.items() if t < now - timedelta(days=8))
    upcoming = next(i for i, t in starts.items() if t > now)
    assert old in seeded.runs and upcoming in seeded.runs
    delete_runs(fresh_server.url, [old, upcoming])
    monkeypatch.setenv("FLOWSYNC_RUN_RETENTION_DAYS", "7")
    result = run_cli("pull", "--api-url", fresh_server.url, "--db", str(db_path), "--verify")
    assert result.exit_code == 0, result.output
    how = dict(query(db_path, "SELECT CAST(id AS VARCHAR), deleted_how FROM deleted_runs"))
    assert how == {old: "aged_out", upcoming: "deleted"}
    [(source, days)] = query(
        db_path, "SELECT retention_source, retention_days FROM deleted_runs LIMIT 1"
    )
    assert (source, days) == ("FLOWSYNC_RUN_RETENTION_DAYS", 7.0)
