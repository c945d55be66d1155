"""flowsync pull against a real server: the DB equals the server's own answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.built import BuiltHistory
from tests.helpers import SeededServer, copy_db, query, run_cli, scalar

pytestmark = pytest.mark.backends("sqlite", "postgres")

STATE_TYPES = [
    "COMPLETED",
    "FAILED",
    "CRASHED",
    "CANCELLED",
    "SCHEDULED",
    "RUNNING",
    "PENDING",
    "PAUSED",
    "CANCELLING",
]


@pytest.fixture(scope="module")
def pulled(prefect: SeededServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("pulled") / "runs.duckdb"
    result = run_cli("pull", "--api-url", prefect.url, "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mode"] == "full"
    return db


def test_counts_match_server_per_state(prefect: SeededServer, pulled: Path) -> None:
    assert (
        scalar(pulled, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL") == prefect.count()
    )
    for state in STATE_TYPES:
        server = prefect.count({"flow_runs": {"state": {"type": {"any_": [state]}}}})
        local = scalar(
            pulled,
            "SELECT count(*) FROM flow_runs WHERE state_type = ? AND deleted_at IS NULL",
            [state],
        )
        assert local == server, state


def test_flows_and_deployments_match(prefect: SeededServer, pulled: Path) -> None:
    assert scalar(pulled, "SELECT count(*) FROM flows") == prefect.count(resource="flows")
    assert scalar(pulled, "SELECT count(*) FROM deployments") == prefect.count(
        resource="deployments"
    )
    for dep_id in list(prefect.seeded.deployments.values())[:4]:
        server = prefect.count({"deployments": {"id": {"any_": [dep_id]}}})
        local = scalar(pulled, "SELECT count(*) FROM flow_runs WHERE deployment_id = ?", [dep_id])
        assert local == server


def test_tags_are_lists_and_match(prefect: SeededServer, pulled: Path) -> None:
    for tag in ("etl", "critical", "keep"):
        server = prefect.count({"flow_runs": {"tags": {"all_": [tag]}}})
        local = scalar(pulled, "SELECT count(*) FROM flow_runs WHERE list_contains(tags, ?)", [tag])
        assert local == server, tag
    assert scalar(pulled, "SELECT typeof(tags) FROM flow_runs LIMIT 1") == "VARCHAR[]"


def test_types_are_real(pulled: Path) -> None:
    types = dict(
        query(
            pulled,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'flow_runs'",
        )
    )
    assert types["id"] == "UUID"
    assert types["expected_start_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["total_run_time"] == "DOUBLE"
    assert types["parameters"] == "JSON"
    assert types["state_details"] == "JSON"


def test_subflow_and_real_run_times(prefect: SeededServer, pulled: Path) -> None:
    child = prefect.real["child"]
    parent_task = scalar(pulled, "SELECT parent_task_run_id FROM flow_runs WHERE id = ?", [child])
    assert parent_task is not None
    with prefect.api() as c:
        for run_id in prefect.real["sleepy"]:
            server = c.get(f"flow_runs/{run_id}").json()
            row = query(
                pulled,
                "SELECT epoch_us(start_time), epoch_us(end_time), total_run_time, state_type FROM flow_runs WHERE id = ?",
                [run_id],
            )[0]
            from datetime import datetime

            def us(s: str) -> int:
                return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1_000_000)

            assert row[0] == us(server["start_time"])
            assert row[1] == us(server["end_time"])
            assert row[2] == pytest.approx(server["total_run_time"])
            assert row[3] == "COMPLETED"
            assert row[2] >= 0.5
    flaky_runs = scalar(
        pulled, "SELECT run_count FROM flow_runs WHERE id = ?", [prefect.real["flaky"]]
    )
    assert flaky_runs == 2


def test_second_pull_is_incremental_and_cheap(prefect: SeededServer, pulled: Path) -> None:
    result = run_cli("pull", "--api-url", prefect.url, "--db", str(pulled), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mode"] == "incremental"
    assert summary["inserted"] == 0 and summary["marked_deleted"] == 0
    assert summary["requests"] <= 10
    rows = query(pulled, "SELECT status, mode FROM sync_runs ORDER BY id")
    assert rows[-2:] == [("ok", "full"), ("ok", "incremental")]


def test_status_reports_counts(prefect: SeededServer, pulled: Path) -> None:
    result = run_cli("status", "--db", str(pulled), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["flow_runs"]["live"] == prefect.count()
    assert data["api_url"] == prefect.url


def test_status_shows_the_server_version(pulled: Path) -> None:
    from harness.server import installed_prefect_version

    version = installed_prefect_version()
    data = json.loads(run_cli("status", "--db", str(pulled), "--json").stdout)
    assert data["server"]["version"] == version
    assert (data["server"]["bulk"], data["server"]["cloud"]) == (True, False)
    text = run_cli("status", "--db", str(pulled))
    assert f"server: Prefect {version}, has the bulk endpoints policies use" in text.stdout


class _Recording:
    """A Progress that keeps what the pull reports, per phase."""

    def __init__(self) -> None:
        self.totals: dict[str, int | None] = {}
        self.done: dict[str, int] = {}
        self._phase = ""

    def phase(self, name: str, total: int | None = None) -> None:
        self._phase = name
        self.totals[name] = total
        self.done.setdefault(name, 0)

    def advance(self, n: int) -> None:
        self.done[self._phase] += n

    def message(self, text: str) -> None:
        pass


def test_full_pull_progress_counts_each_run_once(prefect: SeededServer, db_path: Path) -> None:
    """Keyset paging re-reads each page's boundary rows; the progress count must not."""
    from flowsync.api import Page, PrefectClient
    from flowsync.config import resolve_api
    from flowsync.store import Store
    from flowsync.sync import PullOptions, pull

    progress = _Recording()
    pages: list[int] = []
    with Store.writer(db_path) as store, PrefectClient(resolve_api(prefect.url, None)) as client:
        original = client.filter_page

        def counting(resource: str, body: dict[str, Any]) -> Page:
            page = original(resource, body)
            if resource == "flow_runs":
                pages.append(len(page.rows))
            return page

        client.filter_page = counting  # type: ignore[method-assign]
        pull(client, store, PullOptions(page_size=50), progress)
    total = prefect.count()
    assert sum(pages) > total  # the walk did re-read boundary rows ...
    assert progress.totals["flow_runs"] == total
    assert progress.done["flow_runs"] == total  # ... and progress counted each run once


def test_a_pull_leaves_the_cyclic_collector_nothing_and_runs_it_rarely(
    prefect: SeededServer, db_path: Path
) -> None:
    """httpx ties each response to its stream in a reference cycle: every page's body
    (~300 KB) waited for Python's cyclic collector, which a pull runs rarely (its
    threshold is raised during the pull, restored after: BENCHMARKS.md, "Issue #24")."""
    import gc

    from flowsync.api import PrefectClient
    from flowsync.config import resolve_api
    from flowsync.store import Store
    from flowsync.sync import PullOptions, pull

    thresholds: list[tuple[int, int, int]] = []

    class Watching(_Recording):
        def phase(self, name: str, total: int | None = None) -> None:
            thresholds.append(gc.get_threshold())
            super().phase(name, total)

    before = gc.get_threshold()
    gc.collect()
    gc.disable()  # what the pull leaves is found below, not by a collection in between
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with (
            Store.writer(db_path) as store,
            PrefectClient(resolve_api(prefect.url, None)) as client,
        ):
            pull(client, store, PullOptions(page_size=50), Watching())
            gc.collect()
            left = sorted({type(o).__module__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not [m for m in left if m.startswith(("httpx", "httpcore"))], left
    assert thresholds and all(t[0] >= 50_000 for t in thresholds)
    assert gc.get_threshold() == before


def test_a_pull_that_cannot_reach_the_server_is_recorded_failed(
    pulled: Path, tmp_path: Path
) -> None:
    """A scheduled pull whose server is down (or whose key expired) fails before it starts:
    `status` must say so, not show the last good pull as the last one."""
    import shutil

    db = tmp_path / "runs.duckdb"
    shutil.copyfile(pulled, db)
    before = query(db, "SELECT count(*) FROM sync_runs")[0][0]
    result = run_cli("pull", "--api-url", "http://127.0.0.1:9/api", "--db", str(db))
    assert result.exit_code == 3, result.output
    rows = query(db, "SELECT status, error FROM sync_runs ORDER BY id")
    assert len(rows) == before + 1
    assert rows[-1][0] == "failed" and "127.0.0.1:9" in rows[-1][1]
    status = json.loads(run_cli("status", "--db", str(db), "--json").stdout)
    assert status["last_pull"]["status"] == "failed", status


def test_status_does_not_say_a_pull_is_running_when_none_holds_the_file(
    built: BuiltHistory, tmp_path: Path
) -> None:
    """A pull killed (SIGKILL, the OOM killer) leaves its record `running`. `status` read the
    live file, which it cannot open while a writer holds it: no pull is running, and it says
    the pull was interrupted (what the next pull records), not that one is running."""
    from flowsync.store import Store, sync_log

    db = copy_db(built.path, tmp_path, "runs.duckdb")
    with Store.writer(db) as store, store.transaction():
        killed = sync_log.start_sync_run(store, "http://h/api")
    said = run_cli("status", "--db", str(db), "--json")
    assert said.exit_code == 0, said.output
    last = json.loads(said.stdout)["last_pull"]
    assert last["id"] == killed and last["status"] == "interrupted", last
    text = run_cli("status", "--db", str(db)).stdout
    assert f"last pull #{killed}: interrupted" in text and "running" not in text


def test_status_tells_the_last_pull_from_an_apply_or_refresh_after_it(
    built: BuiltHistory, tmp_path: Path
) -> None:
    """A scheduled pull fails, then `plan --refresh` succeeds and an apply is killed: status
    still says the last pull failed, and when the last good one was; the apply is named
    apart (its record says what it is from its start)."""
    from flowsync.store import Store, sync_log

    db = copy_db(built.path, tmp_path, "runs.duckdb")
    with Store.writer(db) as store, store.transaction():
        good = store.execute("SELECT max(finished_at) FROM sync_runs WHERE status = 'ok'").scalar()
        failed = sync_log.start_sync_run(store, "http://h/api")
        sync_log.finish_sync_run(store, failed, status="failed", error="ApiError: down")
        refresh = sync_log.start_sync_run(store, "http://h/api", "plan-refresh")
        sync_log.finish_sync_run(store, refresh, status="ok", mode="plan-refresh")
        killed = sync_log.start_sync_run(store, "http://h/api", "apply")  # kill -9: never ended
    said = run_cli("status", "--db", str(db), "--json")
    assert said.exit_code == 0, said.output
    status = json.loads(said.stdout)
    assert status["last_pull"]["id"] == failed and status["last_pull"]["status"] == "failed"
    assert status["last_successful_pull_at"][:19] == good.isoformat()[:19]
    assert status["last_apply"]["id"] == killed and status["last_apply"]["mode"] == "apply"
    text = run_cli("status", "--db", str(db)).stdout
    assert f"last pull #{failed}: failed (-)" in text and "ApiError: down" in text
    assert f"last apply or plan --refresh #{killed}: interrupted (apply)" in text
