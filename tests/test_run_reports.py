"""report runs and report stuck (fast lane: a built file, no server): the last failed runs
of a deployment with their signature and a link, and the runs running or waiting longer
than their deployment's usual p95."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flowsync import reports, views
from flowsync.store import Store
from flowsync.store.sync_log import set_state
from tests.helpers import run_cli
from tests.policy_db import DEPLOYMENTS, FLOW, NOW, make_db, rid, run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = [run(n, "FAILED" if n % 3 == 0 else "COMPLETED", n / 4, "prod") for n in range(1, 25)]
    runs += [run(100 + n, "COMPLETED", n / 4, "dev") for n in range(1, 10)]
    db = make_db(tmp_path_factory.mktemp("runs") / "runs.duckdb", runs)
    with Store.writer(db) as store:
        store.execute(
            "UPDATE flow_runs SET state_message = 'KeyError: ' || name WHERE state_type = 'FAILED'"
        )
        # finished runs take a minute (make_db); one prod run has been running 2 h, one dev
        # run waits 10 min past its start, and one prod run started just now (not stuck)
        now = datetime.now(timezone.utc)
        for n, state, dep, started, expected in (
            (50, "RUNNING", "prod", now - timedelta(hours=2), now - timedelta(hours=2)),
            (51, "RUNNING", "prod", now, now),
            (52, "SCHEDULED", "dev", None, now - timedelta(minutes=10)),
        ):
            store.execute(
                """INSERT INTO flow_runs (id, name, flow_id, deployment_id, state_type, state_name,
                    expected_start_time, start_time, created, synced_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())""",
                [
                    rid(n),
                    f"open-{n}",
                    FLOW,
                    DEPLOYMENTS[dep],
                    state,
                    state.title(),
                    expected,
                    started,
                    NOW,
                ],
            )
        set_state(store, "api_url", "http://127.0.0.1:4200/api")
        views.rebuild(store)
    return db


def cli(db: Path, *args: str) -> list[dict[str, Any]]:
    result = run_cli("report", *args, "-f", "json", "--db", str(db))
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def test_runs_lists_the_last_failed_runs_of_a_deployment_with_signature_and_link(
    built: Path,
) -> None:
    rows = cli(built, "runs", "--deployment", "etl/prod", "--since", "30d", "--last", "3")
    assert [r["name"] for r in rows] == ["run-0003", "run-0006", "run-0009"]  # newest first
    assert {r["state_type"] for r in rows} == {"FAILED"}
    assert rows[0]["error_text"] == "KeyError: run-<n>" and len(rows[0]["error_signature"]) == 8
    assert rows[0]["url"] == f"http://127.0.0.1:4200/runs/flow-run/{rid(3)}"
    completed = cli(built, "runs", "--deployment", "dev", "--state", "COMPLETED", "--since", "30d")
    assert len(completed) == 9 and {r["deployment_name"] for r in completed} == {"dev"}


def test_stuck_runs_exceed_their_deployments_usual_p95(built: Path) -> None:
    rows = cli(built, "stuck")
    assert {r["name"]: r["state_type"] for r in rows} == {
        "open-50": "RUNNING",
        "open-52": "SCHEDULED",
    }
    running = next(r for r in rows if r["name"] == "open-50")
    assert running["usual_p95_s"] == pytest.approx(60.0) and running["for_s"] > 7000
    assert running["url"].endswith(rid(50))
    assert [r["name"] for r in cli(built, "stuck", "--deployment", "dev")] == ["open-52"]
    assert cli(built, "stuck", "--min-runs", "100") == []  # no usual: left out, not guessed


@pytest.mark.parametrize(
    ("api_url", "ui"),
    [
        ("http://127.0.0.1:4200/api", "http://127.0.0.1:4200"),
        ("https://prefect.example.com/prefect/api/", "https://prefect.example.com/prefect"),
        ("https://user:***@prefect.example.com/api", "https://prefect.example.com"),
        (
            "https://api.prefect.cloud/api/accounts/a1/workspaces/w2",
            "https://app.prefect.cloud/account/a1/workspace/w2",
        ),
        ("https://example.com/graphql", None),
        (None, None),
    ],
)
def test_prefect_ui_from_the_api_url(api_url: str | None, ui: str | None) -> None:
    assert reports.prefect_ui(api_url) == ui


def test_the_html_page_links_runs_to_the_prefect_ui(built: Path, tmp_path: Path) -> None:
    page = tmp_path / "health.html"
    result = run_cli("report", "health", "--since", "30d", "--html", str(page), "--db", str(built))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert (
        f'href="http://127.0.0.1:4200/runs/flow-run/{rid(3)}"' in text
    )  # latest failure / example
    runs_page = tmp_path / "runs.html"
    result = run_cli(
        "report",
        "runs",
        "--since",
        "30d",
        "--deployment",
        "prod",
        "--html",
        str(runs_page),
        "--db",
        str(built),
    )
    assert result.exit_code == 0, result.output
    assert (
        f'<a href="http://127.0.0.1:4200/runs/flow-run/{rid(3)}">open</a>' in runs_page.read_text()
    )


def test_stuck_needs_min_runs_with_a_duration_not_runs_that_crashed_before_they_started(
    tmp_path: Path,
) -> None:
    """usual_runs is "the finished runs the p95 is of": runs that crashed before they started
    (a worker that could not submit them: CRASHED, no start or end) have no duration, so
    one timed run and four such crashes are no usual of five runs, and the run now running
    is not judged against the one."""
    runs = [run(1, "COMPLETED", 1, "prod")] + [run(n, "CRASHED", 1, "prod") for n in (2, 3, 4, 5)]
    db = make_db(tmp_path / "runs.duckdb", runs)
    now = datetime.now(timezone.utc)
    with Store.writer(db) as store:
        store.execute(
            "UPDATE flow_runs SET start_time = NULL, end_time = NULL WHERE state_type = 'CRASHED'"
        )
        store.execute(
            """INSERT INTO flow_runs (id, name, flow_id, deployment_id, state_type, state_name,
                expected_start_time, start_time, created, synced_at)
            VALUES (?, 'open-9', ?, ?, 'RUNNING', 'Running', ?, ?, ?, now())""",
            [
                rid(9),
                FLOW,
                DEPLOYMENTS["prod"],
                now - timedelta(hours=2),
                now - timedelta(hours=2),
                NOW,
            ],
        )
        views.rebuild(store)
    assert cli(db, "stuck") == []  # one run with a duration: fewer than --min-runs 5
    rows = cli(db, "stuck", "--min-runs", "1")
    assert [(r["name"], r["usual_runs"]) for r in rows] == [("open-9", 1)]


def test_a_pull_that_changed_nothing_moves_the_snapshots_now_to_its_own_start(
    tmp_path: Path,
) -> None:
    """A pull that finds nothing changed keeps the published snapshot (no copy), whose own
    last pull is older. A run due between the two pulls and still SCHEDULED (no worker took
    it: what the late gauge is for) is waiting as of the later pull: the snapshot's readers
    (reports, OpenMetrics, rule SQL, notebooks) count it, as the live file does."""
    import flowsync
    from flowsync.store import snapshot, sync_log

    db = make_db(tmp_path / "runs.duckdb", [run(1, "COMPLETED", 1, "dev")])
    now = datetime.now(timezone.utc)

    def a_pull(store: Any, minutes_ago: int) -> int:
        with store.transaction():
            pull_id = sync_log.start_sync_run(store, "http://test/api")
            sync_log.finish_sync_run(store, pull_id, status="ok", mode="incremental")
            store.execute(
                "UPDATE sync_runs SET started_at = ? WHERE id = ?",
                [now - timedelta(minutes=minutes_ago), pull_id],
            )
        return pull_id

    with Store.writer(db) as store:
        store.execute(
            """INSERT INTO flow_runs (id, name, flow_id, deployment_id, state_type, state_name,
                expected_start_time, created, synced_at)
            VALUES (?, 'due-60', ?, ?, 'SCHEDULED', 'Scheduled', ?, ?, now())""",
            [rid(60), FLOW, DEPLOYMENTS["dev"], now - timedelta(minutes=10), NOW],
        )
        views.rebuild(store)
        assert snapshot.publish(store, pull_id=a_pull(store, 20)).published
    waiting = "SELECT sum(waiting_now), sum(late_now) FROM runs_now(60)"
    with Store.reader(db) as reader:
        assert reader.execute(waiting).one() == (None, None)  # due after the pull of 20 min ago
    with Store.writer(db) as store:
        kept = snapshot.publish(store, pull_id=a_pull(store, 1), changed=False)
    assert not kept.published and kept.snapshot.confirmed_at is not None
    with Store.reader(db) as reader:
        assert reader.execute(waiting).one() == (1, 1)
        assert sync_log.last_pull_at(reader) == kept.snapshot.confirmed_at  # plan's "last pull"
        late = reports.late(reader, "deployment", reports.parse_since("1d"))
        assert late["waiting_now"].sum() == 1
    with Store.sandboxed(db) as sandbox:
        assert sandbox.execute(waiting).one() == (1, 1)
    with flowsync.connect(db) as con:
        assert con.execute(waiting).fetchone() == (1, 1)
    with Store.reader(db, live=True) as reader:
        assert reader.execute(waiting).one() == (1, 1)


def test_a_run_expected_after_the_last_pull_is_not_waiting_as_of_it(tmp_path: Path) -> None:
    """The file knows the runs as of its last pull (20 min ago here): a run it holds as
    SCHEDULED and expected 30 min ago had not started by then, one expected 10 min ago
    may have since. `stuck`, `late`'s waiting_now and `runs_now` (the OpenMetrics gauges)
    counted both, so an hourly pull showed every run due since it as stuck."""
    db = make_db(
        tmp_path / "runs.duckdb", [run(n, "COMPLETED", n / 4, "dev") for n in range(1, 10)]
    )
    now = datetime.now(timezone.utc)
    with Store.writer(db) as store:
        for n, minutes in ((60, 30), (61, 10)):
            store.execute(
                """INSERT INTO flow_runs (id, name, flow_id, deployment_id, state_type, state_name,
                    expected_start_time, created, synced_at)
                VALUES (?, ?, ?, ?, 'SCHEDULED', 'Scheduled', ?, ?, now())""",
                [
                    rid(n),
                    f"due-{n}",
                    FLOW,
                    DEPLOYMENTS["dev"],
                    now - timedelta(minutes=minutes),
                    NOW,
                ],
            )
        store.execute(
            "INSERT INTO sync_runs (started_at, finished_at, status, mode) "
            "VALUES (?, ?, 'ok', 'incremental')",
            [now - timedelta(minutes=20), now - timedelta(minutes=19)],
        )
        views.rebuild(store)
    with Store.reader(db, live=True) as store:
        stuck = reports.stuck(store)
        late = reports.late(store, "deployment", reports.parse_since("1d"))
        gauges = store.execute("SELECT sum(waiting_now), sum(late_now) FROM runs_now(60)").one()
    assert stuck["id"].cast(str).to_list() == [rid(60)]
    assert late["waiting_now"].sum() == 1
    assert gauges == (1, 1)
