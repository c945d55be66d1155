"""The views in sql/: built on pull, one row per what their header says, right numbers.

The figures are checked on a built file (``built``: no server) against the answers the
server would give about its runs; only the view-building of a real pull needs a server."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flowsync import __version__, reports, views
from flowsync.store import Store
from harness.built import Builder, BuiltHistory
from tests.helpers import SeededServer, query, run_cli, scalar
from tests.policy_db import built_db, rid, run


@pytest.fixture(scope="module")
def pulled(built: BuiltHistory) -> Path:
    return built.path


def test_every_sql_file_is_one_view_or_macro_with_a_header() -> None:
    for path in views.view_files():
        text = path.read_text()
        assert text.startswith("-- "), f"{path.name} needs a header comment saying what a row is"
        assert "one row per" in text.split("CREATE", 1)[0], path.name
        name = path.stem.split("_", 1)[1]
        if "CREATE OR REPLACE VIEW" in text:
            assert text.count("CREATE OR REPLACE VIEW") == 1, path.name
            assert "CREATE OR REPLACE MACRO" not in text, path.name
            assert f"CREATE OR REPLACE VIEW {name} AS" in text, path.name
        else:
            assert f"CREATE OR REPLACE MACRO {name}(" in text, path.name


class _HealthOnly(BaseHTTPRequestHandler):
    """A server that says it is healthy and counts the flows, then refuses every other
    request: a first pull gets past its checks, makes the file and stops."""

    def do_GET(self) -> None:
        answers = {"/health": b"true", "/flows/count": b"0"}
        body = next((b for end, b in answers.items() if self.path.endswith(end)), None)
        healthy = body is not None
        body = body if body is not None else b'{"detail": "Unauthorized"}'
        self.send_response(200 if healthy else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_first_pull_that_stops_early_leaves_a_file_the_reports_read(tmp_path: Path) -> None:
    """The pull fails at its first request after the server's check, after creating the
    file; the views are there all the same (a report is empty, not a DuckDB catalog error)."""
    db = tmp_path / "new.duckdb"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        failed = run_cli("pull", "--db", str(db), "--api-url", url)
    finally:
        server.shutdown()
    assert failed.exit_code == 4, failed.output
    assert db.exists()
    report = run_cli("report", "failures", "--db", str(db), "--format", "json")
    assert report.exit_code == 0, report.output
    counted = run_cli("sql", "SELECT count(*) AS n FROM flow_runs_enriched", "--db", str(db))
    assert counted.exit_code == 0 and "0" in counted.stdout, counted.output
    assert "Catalog Error" not in report.output + counted.output


def test_pull_builds_every_view(prefect: SeededServer, tmp_path: Path) -> None:
    pulled = tmp_path / "runs.duckdb"
    assert run_cli("pull", "--api-url", prefect.url, "--db", str(pulled)).exit_code == 0
    names = {r[0] for r in query(pulled, "SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    names |= {
        r[0]
        for r in query(
            pulled,
            "SELECT function_name FROM duckdb_functions() WHERE function_type IN ('macro', 'table_macro')",
        )
    }
    assert {p.stem.split("_", 1)[1] for p in views.view_files()} <= names
    assert scalar(pulled, "SELECT count(*) FROM flow_runs_enriched") == scalar(
        pulled, "SELECT count(*) FROM flow_runs"
    )


MARK = "987654"  # in the marked copy's failure_rates_by_flow (``marked_sql``)
OURS = views.sql_dir()  # this installation's view files (tests patch ``sql_dir``)


def marked_sql(folder: Path) -> Path:
    """A copy of the view files, failure_rates_by_flow's text changed (``LIMIT MARK``):
    another flowsync's SQL."""
    sql = folder / "sql"
    sql.mkdir()
    for path in views.view_files():
        text = path.read_text()
        if path.stem == "22_failure_rates_by_flow":
            text = text.replace("ORDER BY ALL;", f"ORDER BY ALL LIMIT {MARK};")
            assert MARK in text
        (sql / path.name).write_text(text)
    return sql


def marked(db: Path) -> bool:
    """Whether the file's failure_rates_by_flow is the marked copy's."""
    view = "SELECT sql FROM duckdb_views() WHERE view_name = 'failure_rates_by_flow'"
    return MARK in str(scalar(db, view))


def views_step(
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str,
    sql: Path | None = None,
    force: bool = False,
) -> bool:
    """The views step of a pull of ``db`` (``ensure_current``) by flowsync ``version`` with
    the view files in ``sql`` (default: this installation's); whether it rebuilt."""
    from flowsync.store import sync_log

    files = OURS if sql is None else sql
    monkeypatch.setattr(views, "__version__", version, raising=False)
    monkeypatch.setattr(views, "sql_dir", lambda: files)
    with Store.writer(db) as store:
        with store.transaction():
            pull_id = sync_log.start_sync_run(store, "http://test/api")
        return views.ensure_current(store, pull_id, force=force)


def test_views_are_rebuilt_only_when_what_built_them_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull rebuilds the views when the SQL, the schema, the pull before it or the views
    themselves differ, and on --full."""
    from flowsync.store import sync_log

    db = tmp_path / "runs.duckdb"

    def ensure(force: bool = False, first: bool = False) -> bool:
        with Store.writer(db) as store:
            built_now = views.ensure_built(store) if first else False
            with store.transaction():
                pull_id = sync_log.start_sync_run(store, "http://test/api")
            return views.ensure_current(store, pull_id, force=force, built_now=built_now)

    def has(name: str) -> bool:
        return bool(scalar(db, f"SELECT count(*) FROM duckdb_views() WHERE view_name = '{name}'"))

    # A new file: built by the pull's first step, and not again at its end.
    assert ensure(first=True) is False
    assert has("flow_runs_enriched")
    assert ensure(first=True) is False  # a file that has them: ensure_built leaves them
    db.unlink()
    assert ensure() is True  # a new file without the first step: built
    assert ensure() is False  # the same installation, every view there: skipped
    assert ensure() is False
    assert ensure(force=True) is True  # pull --full
    with Store.writer(db) as store:
        store.execute("DROP VIEW failure_rates_by_flow")
    assert ensure() is True  # a view gone: rebuilt
    assert has("failure_rates_by_flow")
    assert ensure() is False
    # An older flowsync's pull in between: its own views and macros, nothing recorded.
    macro = "SELECT macro_definition FROM duckdb_functions() WHERE function_name = 'signature_of'"
    ours = scalar(db, macro)
    with Store.writer(db) as store:
        with store.transaction():
            sync_log.start_sync_run(store, "http://test/api")
        store.execute("CREATE OR REPLACE MACRO signature_of(text) AS 'older'")
    assert "older" in str(scalar(db, macro))
    assert ensure() is True
    assert scalar(db, macro) == ours
    assert ensure() is False
    # Another flowsync's SQL (one view's text changed): rebuilt, with that text.
    sql = marked_sql(tmp_path)
    monkeypatch.setattr(views, "sql_dir", lambda: sql)
    assert ensure() is True
    assert marked(db)
    assert ensure() is False
    # A schema this installation knows more of (another migration): rebuilt.
    from flowsync.store import migrations

    more = [*migrations.MIGRATIONS, ("m999_test", lambda con: None)]
    monkeypatch.setattr(migrations, "MIGRATIONS", more)
    monkeypatch.setattr(views, "MIGRATIONS", more)
    assert ensure() is True


def test_an_older_flowsyncs_pull_keeps_the_views_a_newer_one_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two installations pull one file at the same schema: the older one's pulls (--full
    too) leave the newer one's views as they are, so readers do not flip between their SQL
    with whoever pulled last; a view gone since is rebuilt all the same."""
    db = tmp_path / "runs.duckdb"
    newer = marked_sql(tmp_path)

    def pull(version: str, sql: Path | None = None, force: bool = False) -> bool:
        return views_step(db, monkeypatch, version, sql, force)

    assert pull("999.0.0", newer) is True
    assert marked(db)
    assert pull(__version__) is False
    assert pull(__version__, force=True) is False
    assert marked(db)
    assert pull("999.0.0", newer) is False  # the newer one's next pull: nothing to do
    # A view dropped since: the older one rebuilds every view, with its own SQL.
    with Store.writer(db) as store:
        store.execute("DROP VIEW flow_runs_enriched CASCADE")
    assert pull(__version__) is True
    assert not marked(db)
    assert pull("999.0.0", newer) is True  # and the newer one puts its own back
    assert marked(db)


def test_an_older_flowsyncs_pull_rebuilds_a_newer_ones_views_replaced_by_an_unrecording_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer flowsync built the views; a pull in between by a flowsync that rebuilds its
    own views without recording replaced some (here a macro the views use): the file no
    longer holds the newer one's SQL, so this flowsync's pull rebuilds rather than keeping
    what the record names."""
    from flowsync.store import sync_log

    db = tmp_path / "runs.duckdb"
    macro = "SELECT macro_definition FROM duckdb_functions() WHERE function_name = 'signature_of'"
    assert views_step(db, monkeypatch, "999.0.0") is True
    ours = scalar(db, macro)
    with Store.writer(db) as store:  # the unrecording pull: its own SQL, nothing recorded
        with store.transaction():
            sync_log.start_sync_run(store, "http://test/api")
        store.execute("CREATE OR REPLACE MACRO signature_of(text) AS 'older'")
    assert views_step(db, monkeypatch, __version__) is True
    assert scalar(db, macro) == ours
    assert views_step(db, monkeypatch, __version__) is False


def test_an_older_flowsyncs_pull_full_restores_a_macro_dropped_by_hand_from_a_newer_ones_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/analysis.md: `pull --full` restores a macro dropped by hand. On a file whose views
    a newer flowsync built, an older one's `pull --full` does too (its own SQL: the views
    that call the macro are broken until then)."""
    db = tmp_path / "runs.duckdb"
    assert views_step(db, monkeypatch, "999.0.0") is True
    with Store.writer(db) as store:
        store.execute("DROP MACRO TABLE failure_rates")
    assert views_step(db, monkeypatch, __version__, force=True) is True
    assert scalar(db, "SELECT count(*) FROM failure_rates_by_day") == 0


def test_a_release_rebuilds_the_views_its_own_pre_release_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pre-release (0.2.0rc1, 0.2.0.dev3) is older than its release: after the upgrade the
    release's pull rebuilds the views the pre-release built, with its own SQL, not keeping
    them as a newer flowsync's."""
    pre = marked_sql(tmp_path)
    for before in ("0.2.0rc1", "0.2.0.dev3", "0.2.0b2"):
        db = tmp_path / f"{before}.duckdb"
        assert views_step(db, monkeypatch, before, pre) is True
        assert marked(db)
        assert views_step(db, monkeypatch, "0.2.0") is True, before
        assert not marked(db)


def test_enriched_columns(built: BuiltHistory, pulled: Path) -> None:
    child = built.real["child"]
    row = query(
        pulled,
        "SELECT is_subflow, flow_name, is_finished, is_failure, is_deleted FROM flow_runs_enriched WHERE id = ?",
        [child],
    )[0]
    assert row == (True, "real-child", True, False, False)
    assert scalar(pulled, "SELECT count(*) FROM flow_runs_enriched WHERE is_subflow") == 1
    broken = query(
        pulled,
        "SELECT is_failure, is_finished, deployment_name FROM flow_runs_enriched WHERE id = ?",
        [built.real["broken"]],
    )[0]
    assert broken == (True, True, None)
    dep_id = next(iter(built.deployments.values()))
    names = query(
        pulled,
        "SELECT DISTINCT flow_name, deployment_name FROM flow_runs_enriched WHERE deployment_id = ?",
        [dep_id],
    )
    flow, dep = next(k for k, v in built.deployments.items() if v == dep_id).split("/")
    assert names == [(flow, dep)] or names == []
    # duration and lateness are end - start and start - expected start
    bad = scalar(
        pulled,
        """SELECT count(*) FROM flow_runs_enriched WHERE start_time IS NOT NULL AND end_time IS NOT NULL
                           AND abs(duration_s - epoch(end_time - start_time)) > 1e-6""",
    )
    assert bad == 0
    assert (
        scalar(pulled, "SELECT count(*) FROM retried_runs WHERE id = ?", [built.real["flaky"]]) == 1
    )
    # run_at is expected_start_time, which the server sets on every run (scheduled and real @flow runs)
    assert scalar(pulled, "SELECT count(*) FROM flow_runs_enriched WHERE run_at IS NULL") == 0


def test_daily_and_group_views_match_server_totals(built: BuiltHistory, pulled: Path) -> None:
    failed = built.count({"flow_runs": {"state": {"type": {"any_": ["FAILED", "CRASHED"]}}}})
    finished = built.count(
        {"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}
    )
    cancelled = built.count({"flow_runs": {"state": {"type": {"any_": ["CANCELLED"]}}}})
    for view in (
        "failure_rates_by_day",
        "failure_rates_by_day_deployment",
        "failure_rates_by_flow",
        "failure_rates_by_deployment",
        "failure_rates_by_work_pool",
    ):
        row = query(pulled, f"SELECT sum(failed), sum(runs), sum(cancelled) FROM {view}")[0]
        assert row == (failed, finished, cancelled), view
    etl = built.count(
        {
            "flow_runs": {
                "tags": {"all_": ["etl"]},
                "state": {"type": {"any_": ["FAILED", "CRASHED"]}},
            }
        }
    )
    assert scalar(pulled, "SELECT failed FROM failure_rates_by_tag WHERE tag = 'etl'") == etl
    assert scalar(pulled, "SELECT sum(runs) FROM duration_percentiles_by_flow") == scalar(
        pulled,
        "SELECT count(*) FROM flow_runs_enriched WHERE is_finished AND duration_s IS NOT NULL AND NOT is_deleted",
    )


def test_streaks_and_recoveries_on_a_known_sequence(tmp_path: Path) -> None:
    """FAILED, CRASHED, COMPLETED, CANCELLED, FAILED, COMPLETED, FAILED, FAILED an hour apart."""
    sequence = [
        "FAILED",
        "CRASHED",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "COMPLETED",
        "FAILED",
        "FAILED",
    ]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    t0 = now - timedelta(days=2)
    runs = Builder(random.Random(5), now)
    dep = runs.deployment("seq-flow", "seq", [], None)
    ids = []
    for i, state in enumerate(sequence):  # scheduled, then set to their state (no start time)
        at = t0 + timedelta(hours=i)
        states = [("SCHEDULED", "Scheduled", at, None), (state, state.title(), now, None)]
        ids.append(runs.run("seq-flow", states, at, deployment=dep, end=now)["id"])
    db = runs.write(tmp_path / "seq.duckdb").path
    episodes = query(
        db, "SELECT failed_at, failed_runs, recovery_s FROM failure_recoveries ORDER BY failed_at"
    )
    assert episodes == [
        (t0, 2, 7200.0),
        (t0 + timedelta(hours=4), 1, 3600.0),
        (t0 + timedelta(hours=6), 2, None),
    ]
    assert query(db, "SELECT episodes, recovered, mttr_s FROM mttr_by_deployment") == [
        (3, 2, 5400.0)
    ]
    assert query(
        db, "SELECT finished_runs, failing_streak, last_state_type FROM deployment_streaks"
    ) == [(7, 2, "FAILED")]
    # the on-call backlog: failing since the run at +6h, two failures, last success at +5h
    assert query(
        db,
        "SELECT failing_since, failures_since_success, last_success_at, latest_failure_at, latest_failure_run_id "
        "FROM unresolved_failures",
    ) == [
        (
            t0 + timedelta(hours=6),
            2,
            t0 + timedelta(hours=5),
            t0 + timedelta(hours=7),
            uuid.UUID(ids[7]),
        )
    ]
    with Store.reader(db, live=True) as store:
        two = reports.flaky(store, reports.parse_since("all"), last=2).row(0, named=True)
        three = reports.flaky(store, reports.parse_since("all"), last=3).row(0, named=True)
    assert two["broken"] and not three["broken"]
    assert (two["failed"], two["runs"], two["failure_episodes"], two["mttr_s"]) == (5, 7, 3, 5400.0)


def test_streaks_and_episodes_agree_on_runs_with_the_same_expected_start(tmp_path: Path) -> None:
    """Two schedules at the same time: each night one run completes and one fails. Every
    view takes tied runs in (run_at, id) order: the failure (the higher id) is the latest,
    so the open episode's failed_runs is the failing streak, unresolved_failures lists the
    deployment, and its latest failure is the last night's failed run."""
    runs = []
    for night in (3, 2, 1):
        runs += [run(100 + night, "COMPLETED", night), run(200 + night, "FAILED", night)]
    db = built_db(tmp_path / "runs.duckdb", runs)
    assert query(db, "SELECT failed_runs FROM failure_recoveries WHERE recovered_at IS NULL") == [
        (1,)
    ]
    assert query(
        db, "SELECT failing_streak, last_state_type, latest_failure_run_id FROM deployment_streaks"
    ) == [(1, "FAILED", uuid.UUID(rid(201)))]
    assert scalar(db, "SELECT failures_since_success FROM unresolved_failures") == 1


def test_the_latest_of_runs_with_the_same_expected_start_is_one_run_everywhere(
    tmp_path: Path,
) -> None:
    """Two failed runs at the same run_at, one signature: the error's example (its id and
    message from one run) and `report runs --last 1` name the same run, the higher id."""
    db = built_db(tmp_path / "runs.duckdb", [run(7, "FAILED", 1), run(3, "FAILED", 1)])
    with Store.writer(db) as store:
        store.execute("UPDATE flow_runs SET state_message = 'bad row ' || CAST(id AS VARCHAR)[-1:]")
        store.execute(
            "UPDATE flow_runs SET expected_start_time = (SELECT min(expected_start_time) FROM flow_runs)"
        )
    with Store.reader(db, live=True) as store:
        example = reports.errors(store, reports.parse_since("7d")).row(0, named=True)
        latest = reports.runs(store, reports.parse_since("7d"), last=1)["id"].to_list()
    assert (str(example["example_run_id"]), example["example_message"]) == (rid(7), "bad row 7")
    assert [str(i) for i in latest] == [rid(7)]
