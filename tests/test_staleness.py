"""Edits without events reach the file within the staleness window; the events window is checked (issue #11).

Real Prefect servers: PATCH /flow_runs/{id} (tags, name, parameters,
job_variables) emits no event, so only the rolling re-read finds it. A server
that keeps events for less time than the cursor's age (its retention setting)
gets a full reconciliation instead of a pull that trusts missing events.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync.api import PrefectClient
from flowsync.config import ApiSettings
from flowsync.store import Store, synced_tables
from flowsync.sync import PullOptions, pull
from harness.seed import seed
from harness.server import Server
from tests.helpers import patch_run, query, run_cli, scalar
from tests.policy_db import make_db, run


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    seed(module_server.url, runs=60, flows=2, deployments_per_flow=1, days=20, seed_value=5)
    return module_server


def pull_with(url: str, db: Path, **options: object) -> dict[str, object]:
    with Store.writer(db) as store, PrefectClient(ApiSettings(url=url)) as client:
        return pull(client, store, PullOptions(**options)).to_json()  # type: ignore[arg-type]


def edit_four(url: str) -> list[str]:
    runs = httpx.post(
        f"{url}/flow_runs/filter", json={"limit": 4, "sort": "ID_DESC"}, timeout=60
    ).json()
    scheduled = httpx.post(
        f"{url}/flow_runs/filter",
        timeout=60,
        json={  # job variables: scheduled runs only
            "limit": 1,
            "sort": "EXPECTED_START_TIME_DESC",
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        },
    ).json()
    # Three other runs (the scheduled one can be among the newest ids), then the scheduled one.
    others = [r["id"] for r in runs if r["id"] != scheduled[0]["id"]][:3]
    ids = [*others, scheduled[0]["id"]]
    assert len(set(ids)) == 4
    edits: list[dict[str, Any]] = [
        {"tags": ["edited"]},
        {"name": "renamed-run"},
        {"parameters": {"x": 42}},
        {"job_variables": {"image": "edited:1"}},
    ]
    for run_id, body in zip(ids, edits):
        patch_run(url, run_id, body)
    return ids


def in_file(db: Path, ids: list[str]) -> tuple[bool, bool, bool, bool]:
    rows = dict(
        query(
            db,
            "SELECT CAST(id AS VARCHAR), [list_contains(tags, 'edited'), name = 'renamed-run', "
            "parameters->>'$.x' = '42', job_variables->>'$.image' = 'edited:1'] FROM flow_runs",
        )
    )
    return (
        bool(rows[ids[0]][0]),
        bool(rows[ids[1]][1]),
        bool(rows[ids[2]][2]),
        bool(rows[ids[3]][3]),
    )


def test_edits_without_events_reach_the_file_within_the_window(
    server: Server, tmp_path: Path
) -> None:
    db = tmp_path / "runs.duckdb"
    assert pull_with(server.url, db)["mode"] == "full"
    ids = edit_four(server.url)
    # the events-driven pull cannot see them, and nothing is due yet
    quiet = pull_with(server.url, db)
    assert quiet["mode"] == "incremental" and quiet["reread"] == 0
    assert in_file(db, ids) == (False, False, False, False)
    # once the window has passed, an ordinary incremental pull re-reads every live run
    window = timedelta(seconds=3)
    time.sleep(window.total_seconds())
    began = scalar(db, "SELECT now()")
    result = pull_with(server.url, db, staleness=window)
    assert result["mode"] == "incremental"
    live = scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL")
    assert result["reread"] == live
    assert in_file(db, ids) == (True, True, True, True)
    # the guarantee: after a pull, no live run was last read longer than the window ago
    assert (
        scalar(db, "SELECT min(synced_at) FROM flow_runs WHERE deleted_at IS NULL")
        >= began - window
    )
    # and right after it nothing is due: the re-read is spread, not repeated (asked of the
    # store at a fixed moment, a second after the oldest read: a pull's own duration on a
    # loaded machine can exceed this 3 s window)
    oldest = scalar(db, "SELECT min(synced_at) FROM flow_runs WHERE deleted_at IS NULL")
    with Store.reader(db, live=True) as store:
        assert synced_tables.due_for_reread(store, window, now=oldest + timedelta(seconds=1)) == []


def test_a_re_read_in_many_requests_at_once_brings_every_edit(
    server: Server, tmp_path: Path
) -> None:
    """The re-read by id with three requests in flight (pages of 7: nine requests) misses no
    run and no edit, whatever order the answers arrive in."""
    db = tmp_path / "runs.duckdb"
    pull_with(server.url, db)
    runs = httpx.post(f"{server.url}/flow_runs/filter", json={"limit": 200}, timeout=60).json()
    tag = f"reread-{uuid.uuid4().hex[:8]}"
    edited = {r["id"] for r in runs[::5]}  # spread over every request of the re-read
    for run_id in edited:
        patch_run(server.url, run_id, {"tags": [tag]})
    window = timedelta(seconds=2)
    time.sleep(window.total_seconds())
    shown: list[tuple[str, int | None]] = []

    class Shown:  # what the CLI's progress would show: the phase, its total, each advance
        def phase(self, name: str, total: int | None = None) -> None:
            shown.append((name, total))

        def advance(self, n: int) -> None:
            shown.append(("advance", n))

        def message(self, text: str) -> None:
            pass

    options = PullOptions(staleness=window, concurrency=3, page_size=7)
    with Store.writer(db) as store, PrefectClient(ApiSettings(url=server.url)) as client:
        result = pull(client, store, options, Shown()).to_json()
    live = scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL")
    assert result["reread"] == live == len(runs)
    # the re-read is a phase of its own with its total, advanced to it
    after = shown[shown.index(("re-read", live)) + 1 :]
    assert sum(n or 0 for kind, n in after if kind == "advance") == live
    tagged = query(
        db, f"SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE list_contains(tags, '{tag}')"
    )
    assert {r[0] for r in tagged} == edited


def test_re_reads_are_spread_over_the_window(tmp_path: Path) -> None:
    """Runs read at the same moment (a full pull) come due between 75% and 95% of the window, by id."""
    db = make_db(tmp_path / "runs.duckdb", [run(i) for i in range(1, 1001)])
    read_at = scalar(db, "SELECT max(synced_at) FROM flow_runs")
    window = timedelta(hours=24)
    with Store.reader(db, live=True) as store:
        due = {
            f: len(synced_tables.due_for_reread(store, window, now=read_at + window * f))
            for f in (0.7, 0.8, 0.85, 0.9, 0.96)
        }
    assert due[0.7] == 0 and due[0.96] == 1000
    assert 100 < due[0.8] < due[0.85] < due[0.9] < 1000  # a share each pull, not all at once
    assert abs(due[0.85] - 500) < 100  # about uniform over [0.75, 0.95]


def test_status_shows_the_oldest_re_read(server: Server, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    assert run_cli("pull", "--api-url", server.url, "--db", str(db), "--quiet").exit_code == 0
    status = run_cli("status", "--db", str(db), "--json")
    oldest = json.loads(status.stdout)["flow_runs"]["oldest_read_at"]
    assert oldest is not None
    assert "oldest re-read of a live run" in run_cli("status", "--db", str(db)).stdout
    # the flag and the environment variable set the window (its smallest, 0.36 s; the runs
    # read an hour ago, so that every one is due however soon this pull follows)
    with Store.writer(db) as store:
        store.execute("UPDATE flow_runs SET synced_at = synced_at - INTERVAL 1 HOUR")
    env = run_cli(
        "pull",
        "--api-url",
        server.url,
        "--db",
        str(db),
        "--json",
        env={"FLOWSYNC_STALENESS_HOURS": "0.0001"},
    )
    assert env.exit_code == 0, env.output
    assert json.loads(env.stdout)["reread"] == scalar(
        db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL"
    )


def _full_pull_stopped(url: str, db: Path, options: dict[str, Any]) -> str:
    """A first (full) pull stopped by a 503 storm after its first segments; the id of the
    earliest run, read in a segment done before the stop."""
    from flowsync.api import RetryPolicy
    from flowsync.errors import ApiError
    from flowsync.store import sync_log
    from flowsync.sync import runs as sync_runs
    from tests.helpers import forwarding

    calls = iter(range(10**6))

    def storm(request: httpx.Request, _: int) -> httpx.Response | None:
        if request.url.path.endswith("/flow_runs/filter") and next(calls) >= 6:
            return httpx.Response(503, text="Service Unavailable")
        return None

    with (
        Store.writer(db) as store,
        PrefectClient(
            ApiSettings(url=url), transport=forwarding(storm), retry=RetryPolicy(attempts=1)
        ) as client,
        pytest.raises(ApiError),
    ):
        pull(client, store, PullOptions(**options))
    with Store.reader(db, live=True) as reader:
        segments = sync_log.get_state(reader, sync_runs.FULL_PASS)["segments"]
    assert segments[0]["done"] and not segments[-1]["done"]
    return str(
        query(db, "SELECT CAST(id AS VARCHAR) FROM flow_runs ORDER BY expected_start_time")[0][0]
    )


SMALL_SEGMENTS: dict[str, Any] = {"segment_rows": 10, "page_size": 10, "concurrency": 1}


def test_a_resumed_full_pull_keeps_the_staleness_guarantee(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A full pull resumed later than the window walks only the segments not done: the runs of
    the done ones (one of them edited in between, which emits no event) are re-read before
    the pull ends."""
    url = fresh_server.url
    seed(url, runs=60, flows=1, deployments_per_flow=1, days=20, seed_value=13)
    db = tmp_path / "runs.duckdb"
    early = _full_pull_stopped(url, db, SMALL_SEGMENTS)
    window = timedelta(seconds=3)
    time.sleep(window.total_seconds() + 1)  # resumed later than the window
    patch_run(url, early, {"tags": ["edited"]})
    began = scalar(db, "SELECT now()")
    result = pull_with(url, db, staleness=window, **SMALL_SEGMENTS)
    assert result["mode"] == "full" and "resuming" in str(result["reason"])
    oldest = scalar(db, "SELECT min(synced_at) FROM flow_runs WHERE deleted_at IS NULL")
    assert oldest >= began - window
    assert scalar(db, "SELECT tags FROM flow_runs WHERE id = ?", [early]) == ["edited"]


def test_a_resumed_full_pull_marks_a_run_deleted_in_a_part_walked_before_the_stop(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A run of a segment done before the stop is deleted on the server (no event) before
    the resume: the resumed pass walked only the other segments and looked only at runs it
    had not seen, so it ended `ok` with the run still live in the file. It compares the
    totals and the history as an incremental pull does, and marks it deleted."""
    from harness.seed import delete_runs
    from tests.server_truth import assert_matches_server

    url = fresh_server.url
    seed(url, runs=60, flows=1, deployments_per_flow=1, days=20, seed_value=13)
    db = tmp_path / "runs.duckdb"
    early = _full_pull_stopped(url, db, SMALL_SEGMENTS)
    delete_runs(url, [early])
    result = pull_with(url, db, **SMALL_SEGMENTS)
    assert result["mode"] == "full" and "resuming" in str(result["reason"])
    assert scalar(db, "SELECT deleted_at IS NOT NULL FROM flow_runs WHERE id = ?", [early])
    assert_matches_server(db, url)


def test_a_column_the_server_changes_without_its_stamp_is_published_by_the_pull_that_reads_it(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A subflow's parent task run is deleted: Prefect sets the run's `parent_task_run_id`
    to NULL and leaves `updated` as it was. The rolling re-read wrote the new row into the
    live file, but the pull counted no change and kept the old snapshot, so readers (and
    plan) kept the old value while apply read the new one. It is a change now: counted,
    and published."""
    from flowsync import operations
    from harness.seed import post_json

    url = fresh_server.url
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        flow = post_json(c, "flows/", {"name": "unstamped"})["id"]
        parent = post_json(c, "flow_runs/", {"flow_id": flow, "state": {"type": "COMPLETED"}})
        task = post_json(
            c, "task_runs/", {"flow_run_id": parent["id"], "task_key": "t", "dynamic_key": "0"}
        )["id"]
        child = post_json(
            c,
            "flow_runs/",
            {"flow_id": flow, "parent_task_run_id": task, "state": {"type": "COMPLETED"}},
        )["id"]
    db = tmp_path / "runs.duckdb"
    operations.pull(db, api=ApiSettings(url=url))
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        before = c.get(f"flow_runs/{child}").json()["updated"]
        assert c.delete(f"task_runs/{task}").status_code == 204
        after = c.get(f"flow_runs/{child}").json()
    assert after["parent_task_run_id"] is None and after["updated"] == before
    time.sleep(1.5)  # the re-read's window (1 s) has passed: the run is due
    pulled = operations.pull(
        db, api=ApiSettings(url=url), options=PullOptions(staleness=timedelta(seconds=1))
    )
    assert pulled.result.changed and pulled.snapshot.published, pulled.snapshot
    read = run_cli(
        "sql", f"SELECT parent_task_run_id FROM flow_runs WHERE id = '{child}'", "--db", str(db)
    )
    assert read.exit_code == 0 and task not in read.stdout, read.stdout  # the snapshot's


def _stopped_then_changed(url: str, tmp_path: Path) -> tuple[Path, str, str]:
    """A full pull stopped after its first segments (``_full_pull_stopped``), then a run of a
    segment done before the stop moved to another state (its event stored): the file, that
    run's id and its new state."""
    from harness.seed import set_states
    from tests.helpers import local_state, wait_for_state_events

    seed(url, runs=60, flows=1, deployments_per_flow=1, days=20, seed_value=13)
    db = tmp_path / "runs.duckdb"
    early = _full_pull_stopped(url, db, SMALL_SEGMENTS)
    to = "CANCELLED" if local_state(db, early) != "CANCELLED" else "FAILED"
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        set_states(c, [early], to, to.title())
    wait_for_state_events(url, [early], to)
    return db, early, to


def test_a_resumed_full_pull_asks_the_state_changes_since_the_pass_began(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A run of a segment done before the stop changes state before the resume: the resumed
    pull brings it, as an incremental pull would, not the next one."""
    from tests.helpers import local_state

    db, early, to = _stopped_then_changed(fresh_server.url, tmp_path)
    assert pull_with(fresh_server.url, db, **SMALL_SEGMENTS)["mode"] == "full"
    assert local_state(db, early) == to


def test_a_resumed_full_pull_whose_events_query_is_throttled_fails_and_resumes_later(
    fresh_server: Server, tmp_path: Path
) -> None:
    """As above, but the server answers 429 to every events query of the resumed pull: the
    events API is there and did not answer. The pull fails saying so and keeps its pass, so
    the next one (answered) still asks the state changes since the pass began; it must not
    finish as if the server had no events API, its changed run left as it was."""
    from flowsync.store import sync_log
    from flowsync.sync import runs as sync_runs
    from tests.helpers import local_state, pull_with_events_throttled

    db, early, to = _stopped_then_changed(fresh_server.url, tmp_path)
    stopped = pull_with_events_throttled(fresh_server.url, db, PullOptions(**SMALL_SEGMENTS))
    assert "429" in str(stopped) and "events" in str(stopped), stopped
    with Store.reader(db, live=True) as reader:
        assert sync_log.get_state(reader, sync_runs.FULL_PASS) is not None  # still to finish
    assert pull_with(fresh_server.url, db, **SMALL_SEGMENTS)["mode"] == "full"
    assert local_state(db, early) == to


def _age_cursor(db: Path, hours: float) -> None:
    with Store.writer(db) as store:
        store.execute(
            "UPDATE sync_state SET value = to_json(strftime(CAST(value->>'$' AS TIMESTAMPTZ) - to_hours(CAST(? AS BIGINT)), "
            "'%Y-%m-%dT%H:%M:%S.%f+00:00')) WHERE key = 'flow_runs.cursor'",
            [int(hours)],
        )


def test_events_window_is_checked_against_the_server(server: Server, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    pull_with(server.url, db)
    # The seed's events all happened minutes ago. With the cursor moved 3 hours back the
    # server holds no event from before it, but it keeps events 7 days: the window is whole.
    _age_cursor(db, 3)
    assert pull_with(server.url, db)["mode"] == "incremental"


def test_a_server_keeping_events_for_less_than_the_cursor_age_gets_a_full_reconciliation(
    start_server: Any, tmp_path: Path
) -> None:
    home = tmp_path / "short-retention"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "short"\n[profiles.short]\nPREFECT_SERVER_EVENTS_RETENTION_PERIOD = "PT2H"\n'
    )
    with start_server(home=home) as s:
        seed(s.url, runs=20, flows=1, deployments_per_flow=1, days=5, seed_value=9)
        db = tmp_path / "runs.duckdb"
        pull_with(s.url, db)
        _age_cursor(db, 1)
        assert pull_with(s.url, db)["mode"] == "incremental"  # 1 h < the 2 h it keeps
        _age_cursor(db, 3)
        result = pull_with(s.url, db)
        assert result["mode"] == "full"
        assert "keeps flow-run events for 2 hours" in str(result["reason"])
