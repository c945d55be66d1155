"""Incremental pulls on a server that changes: new, changed and deleted runs; churn; crashes; locks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.seed import Seeded, create_bulk, delete_runs, post_json, seed, set_states
from harness.server import Server, free_port
from tests.helpers import (
    SeededServer,
    forwarding,
    local_state,
    pull_with_events_throttled,
    query,
    run_cli,
    scalar,
    server_date_past,
    wait_for_state_events,
)
from tests.server_truth import assert_matches_server, local_runs, server_runs

pytestmark = pytest.mark.backends("sqlite", "postgres")


def seeded_and_pulled(url: str, db: Path, runs: int, seed_value: int) -> Seeded:
    """``runs`` runs of one flow and deployment on the server, then a first pull into ``db``."""
    seeded = seed(url, runs=runs, flows=1, deployments_per_flow=1, seed_value=seed_value)
    pull(url, db)
    return seeded


def completed(seeded: Seeded) -> list[str]:
    return [i for i, s in seeded.runs.items() if s == "COMPLETED"]


def move_to(url: str, ids: list[str], state_type: str) -> None:
    """Force ``ids`` into ``state_type`` on the server at ``url``."""
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        set_states(c, ids, state_type, state_type.title())


def pull(url: str, db: Path, *extra: str) -> dict[str, Any]:
    result = run_cli("pull", "--api-url", url, "--db", str(db), "--json", *extra)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def date_ahead(by: timedelta) -> httpx.MockTransport:
    """The real server behind a ``Date`` header ``by`` ahead of its clock: a proxy that sets its
    own (nginx does), this machine's clock standing in for a missing one, or the server's own
    clock while it ran ahead."""

    def shift(_: httpx.Request, response: httpx.Response) -> None:
        date = parsedate_to_datetime(response.headers["date"])
        response.headers["date"] = format_datetime(date + by, usegmt=True)

    return forwarding(after=shift)


def pull_through(
    url: str, db: Path, transport: httpx.BaseTransport | None = None, progress: Any = None
) -> str:
    """A pull through ``transport`` (the library's, which takes one); its mode."""
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.store import Store
    from flowsync.sync import pull as pull_api

    with (
        Store.writer(db) as store,
        PrefectClient(ApiSettings(url=url), transport=transport) as client,
    ):
        return pull_api(client, store, progress=progress).mode


def caught_up(
    url: str, db: Path, run: str, transport: httpx.BaseTransport | None = None, pulls: int = 1
) -> None:
    """``pulls`` incremental pulls (through ``transport``) take ``run``'s failure: the file
    holds it, and matches the server."""
    for _ in range(pulls):
        assert pull_through(url, db, transport) == "incremental"
    assert local_state(db, run) == "FAILED"
    assert_matches_server(db, url)


def fail_one(url: str) -> str:
    """One run that is not FAILED, moved to FAILED on the server once its event is stored."""
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        run = c.post(
            "flow_runs/filter",
            json={"limit": 1, "flow_runs": {"state": {"type": {"not_any_": ["FAILED"]}}}},
        ).json()[0]["id"]
        set_states(c, [run], "FAILED", "Failed")
    wait_for_state_events(url, [run], "FAILED")
    return str(run)


def test_changes_between_pulls(fresh_server: Server, db_path: Path) -> None:
    url = fresh_server.url
    seeded = seed(url, runs=150, flows=2, deployments_per_flow=2, seed_value=1)
    first = pull(url, db_path)
    assert first["mode"] == "full"
    assert_matches_server(db_path, url)

    ids = list(seeded.runs)
    rng = random.Random(3)
    changed = rng.sample(ids, 10)
    deleted = rng.sample([i for i in ids if i not in changed], 7)
    move_to(url, changed, "CANCELLED")
    delete_runs(url, deleted)
    new = seed(url, runs=12, flows=1, deployments_per_flow=1, seed_value=99)
    # The changes reach a pull through their state events, which the server stores on its own
    # schedule (seconds late on a busy machine; a later pull's overlap takes the late ones):
    # this test is about the changes, so it waits until the server has them.
    wait_for_state_events(url, changed, "CANCELLED")
    for state in set(new.runs.values()):
        wait_for_state_events(url, [i for i, s in new.runs.items() if s == state], state)

    second = pull(url, db_path)
    assert second["mode"] == "incremental"
    assert_matches_server(db_path, url)
    # deleted runs stay, marked
    marked = {
        str(r[0]) for r in query(db_path, "SELECT id FROM flow_runs WHERE deleted_at IS NOT NULL")
    }
    assert marked == set(deleted)
    for run_id in changed:
        assert local_state(db_path, run_id) == "CANCELLED"
    assert set(new.runs) <= {str(r[0]) for r in query(db_path, "SELECT id FROM flow_runs")}
    # and the pull after that does nothing, cheaply
    third = pull(url, db_path)
    assert third["inserted"] == 0 and third["marked_deleted"] == 0
    assert int(third["requests"]) <= 10
    # every table is in the summary, changed or not (scripts read .tables.flow_runs)
    assert set(third["tables"]) >= {"flows", "deployments", "flow_runs"}
    assert third["tables"]["flow_runs"]["inserted"] == 0


def test_full_flag_reconciles_and_marks_deleted(fresh_server: Server, db_path: Path) -> None:
    url = fresh_server.url
    seeded = seeded_and_pulled(url, db_path, runs=60, seed_value=2)
    gone = list(seeded.runs)[:5]
    delete_runs(url, gone)
    result = pull(url, db_path, "--full")
    assert result["mode"] == "full" and result["marked_deleted"] == 5
    assert_matches_server(db_path, url)


def test_churn_during_pull_converges(fresh_server: Server, db_path: Path) -> None:
    """A thread creates, changes and deletes runs while pulls run; the pull after it settles matches.

    "Settles" includes the server's event persister: it stores events in batches
    (every few seconds, later on a loaded PostgreSQL server), and a pull can only
    see a state change once its event is stored.
    """
    url = fresh_server.url
    began = datetime.now(timezone.utc) - timedelta(seconds=5)
    seeded = seed(url, runs=250, flows=2, deployments_per_flow=2, seed_value=4)
    deployment = next(iter(seeded.deployments.values()))
    ids = list(seeded.runs)
    evented: set[str] = set()
    stop = threading.Event()
    rng = random.Random(5)

    def churn() -> None:
        with httpx.Client(base_url=url + "/", timeout=60) as c:
            while not stop.is_set():
                op = rng.random()
                try:
                    if op < 0.4:
                        r = c.post(
                            f"deployments/{deployment}/create_flow_run",
                            json={"idempotency_key": str(uuid.uuid4())},
                        )
                        if r.status_code in (200, 201):
                            evented.add(r.json()["id"])
                    elif op < 0.7 and ids:
                        run_id = rng.choice(ids)
                        r = c.post(
                            f"flow_runs/{run_id}/set_state",
                            json={"state": {"type": "CANCELLED"}, "force": True},
                        )
                        if r.status_code in (200, 201) and r.json().get("status") == "ACCEPT":
                            evented.add(run_id)
                    elif ids:
                        c.delete(f"flow_runs/{ids.pop(rng.randrange(len(ids)))}")
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        pull(url, db_path, "--full")
        pull(url, db_path)
    finally:
        stop.set()
        worker.join()
    _wait_for_events(url, evented, began)
    pull(url, db_path)
    assert_matches_server(db_path, url)
    assert scalar(db_path, "SELECT count(*) - count(DISTINCT id) FROM flow_runs") == 0


def _wait_for_events(url: str, ids: set[str], since: datetime, timeout: float = 90) -> None:
    """Block until the server has stored a flow-run event for each of ``ids`` (as a pull asks for them)."""
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings

    deadline = time.monotonic() + timeout
    with PrefectClient(ApiSettings(url=url)) as client:
        while True:
            seen = client.changed_flow_runs(since, datetime.now(timezone.utc) + timedelta(hours=1))
            if ids <= set(seen):
                return
            assert time.monotonic() < deadline, f"{len(ids - set(seen))} runs' events never stored"
            time.sleep(1)


def _flowsync(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowsync", *args]


def test_kill_9_mid_pull_then_resume(fresh_server: Server, db_path: Path) -> None:
    url = fresh_server.url
    seed(url, runs=400, flows=2, deployments_per_flow=2, seed_value=6)
    env = {**os.environ, "PREFECT_API_URL": url}
    for delay in (0.0, 0.3, 0.6):
        proc = subprocess.Popen(
            _flowsync("pull", "--db", str(db_path), "--concurrency", "1"),
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines: the pull is past flows, into deployments or runs
            if line.startswith("flows:"):
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(
        _flowsync("pull", "--db", str(db_path), "--json"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert_matches_server(db_path, url)
    assert scalar(db_path, "SELECT count(*) - count(DISTINCT id) FROM flow_runs") == 0
    statuses = [r[0] for r in query(db_path, "SELECT status FROM sync_runs ORDER BY id")]
    assert statuses[-1] == "ok"
    assert "interrupted" in statuses  # a killed pull left 'running', the next one recorded it


def test_second_concurrent_pull_is_refused_then_waits(fresh_server: Server, db_path: Path) -> None:
    url = fresh_server.url
    seeded_and_pulled(url, db_path, runs=20, seed_value=8)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db_path)!r}); print('ok', flush=True); time.sleep(4)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
    try:
        refused = run_cli("pull", "--api-url", url, "--db", str(db_path))
        assert refused.exit_code == 6
        assert (
            "held by another process" in refused.stderr
            and "Close that connection" in refused.stderr
        )
        assert "Traceback" not in refused.output
        waited = run_cli("pull", "--api-url", url, "--db", str(db_path), "--wait", "30")
        assert waited.exit_code == 0, waited.output
    finally:
        holder.wait()
    assert_matches_server(db_path, url)


def test_server_truth_helper_sees_all(fresh_server: Server) -> None:
    seed(fresh_server.url, runs=5, flows=1, deployments_per_flow=1)
    assert len(server_runs(fresh_server.url)) == 5


def test_many_runs_sharing_one_expected_start(fresh_server: Server, db_path: Path) -> None:
    """More than two pages of runs on one timestamp: the keyset walk must not stall or skip.
    (Pages of 20 runs: the walk is the same at the API's 200, with a tenth of the runs.)"""
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.store import Store
    from flowsync.sync import PullOptions
    from flowsync.sync import pull as pull_api

    url = fresh_server.url
    n_same = 45
    seeded = seed(url, runs=1, flows=1, deployments_per_flow=1)
    deployment = next(iter(seeded.deployments.values()))
    when = "2026-01-01T00:00:00+00:00"
    with httpx.Client(base_url=url + "/", timeout=120) as c:
        for start in range(0, n_same, 100):
            body = [
                {
                    "idempotency_key": str(uuid.uuid4()),
                    "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}},
                }
                for _ in range(min(100, n_same - start))
            ]
            assert c.post(
                f"deployments/{deployment}/create_flow_run/bulk", json=body
            ).status_code in (200, 201)
    with Store.writer(db_path) as store, PrefectClient(ApiSettings(url=url)) as client:
        pull_api(client, store, PullOptions(page_size=20))
    assert_matches_server(db_path, url)


def test_verify_finds_a_state_change_whose_event_was_missed(
    fresh_server: Server, db_path: Path
) -> None:
    """With the event window moved past the change, only the per-bucket counts can find it."""
    url = fresh_server.url
    seeded = seeded_and_pulled(url, db_path, runs=40, seed_value=11)
    target = completed(seeded)[0]
    move_to(url, [target], "FAILED")
    wait_for_state_events(url, [target], "FAILED")
    server_date_past(url)  # the next pull's Date is after the change
    # Pretend the last pull happened after the change, so its event is outside the window
    # (which starts no later than the next pull's Date).
    import duckdb

    con = duckdb.connect(str(db_path))
    con.execute(
        "UPDATE sync_state SET value = to_json(strftime(now() + INTERVAL 1 HOUR, '%Y-%m-%dT%H:%M:%S+00:00')) "
        "WHERE key IN ('flow_runs.cursor', 'flow_runs.events_cursor')"
    )
    con.close()
    quiet = pull(url, db_path, "--overlap", "0")
    assert local_state(db_path, target) == "COMPLETED"
    # totals agree: no histogram (9: the identity check, and whether the server still holds
    # the newest state event the last pull read)
    assert int(quiet["requests"]) <= 9
    pull(url, db_path, "--overlap", "0", "--verify")
    assert local_state(db_path, target) == "FAILED"
    assert_matches_server(db_path, url)


def test_a_state_change_after_the_server_clock_stepped_back_is_not_lost(
    fresh_server: Server, db_path: Path
) -> None:
    """The server's clock ran 30 minutes ahead during one pull (a VM resumed, NTP off) and was
    then put right. A cursor taken from that pull's Date would start the next events window
    20 minutes in the future: the state change made right after the correction would be
    outside every later window (until the daily check)."""
    url = fresh_server.url
    seed(url, runs=20, flows=1, deployments_per_flow=1, days=3, seed_value=11)
    assert pull_through(url, db_path) == "full"
    assert pull_through(url, db_path, date_ahead(timedelta(minutes=30))) == "incremental"
    run = fail_one(url)  # the clock is right again
    caught_up(url, db_path, run)


def test_a_state_change_is_not_lost_behind_a_proxy_whose_clock_is_ahead(
    fresh_server: Server, db_path: Path
) -> None:
    """Every answer's Date is 15 minutes ahead of the server's clock (a proxy's own). A cursor
    taken from it would start each events window 5 minutes after the previous pull: a state
    change in those minutes would never be asked for."""
    url = fresh_server.url
    proxy = date_ahead(timedelta(minutes=15))
    seed(url, runs=20, flows=1, deployments_per_flow=1, days=3, seed_value=11)
    assert pull_through(url, db_path, proxy) == "full"
    run = fail_one(url)
    caught_up(url, db_path, run, proxy, pulls=2)


@pytest.mark.backends("sqlite")  # what the client makes of an event's id: no backend in it
def test_an_event_naming_no_run_does_not_stop_the_pull(fresh_server: Server, db_path: Path) -> None:
    """Any client may post events (``POST /events``). One whose resource looks like a flow run's
    but whose id is no run id (no UUID) names no run: the pull passes it by and still takes
    the real state changes beside it; an id in capitals is the run it names."""
    url = fresh_server.url
    seed(url, runs=20, flows=1, deployments_per_flow=1, days=3, seed_value=11)
    assert pull_through(url, db_path) == "full"
    run = fail_one(url)
    now = datetime.now(timezone.utc).isoformat()
    odd = ["not-a-run", "", run.upper()]  # after "prefect.flow-run."
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": "prefect.flow-run.Completed",
            "resource": {"prefect.resource.id": f"prefect.flow-run.{name}"},
        }
        for name in odd
    ]
    assert httpx.post(f"{url}/events", json=events, timeout=30).status_code == 204
    wait_for_state_events(url, odd, "COMPLETED")  # stored on the server's own schedule
    caught_up(url, db_path, run)


def test_a_missing_date_header_is_said_and_loses_no_state_change(
    fresh_server: Server, db_path: Path
) -> None:
    """Answers without a Date header: this machine's clock stands in for the server's, and
    the pull says so; the events window does not depend on it."""
    from flowsync.progress import NullProgress

    said: list[str] = []

    class Said(NullProgress):
        def message(self, text: str) -> None:
            said.append(text)

    def drop_date(_: httpx.Request, response: httpx.Response) -> None:
        del response.headers["date"]

    url = fresh_server.url
    no_date = forwarding(after=drop_date)
    seed(url, runs=20, flows=1, deployments_per_flow=1, days=3, seed_value=11)
    assert pull_through(url, db_path, no_date) == "full"
    run = fail_one(url)
    assert pull_through(url, db_path, no_date, Said()) == "incremental"
    assert local_state(db_path, run) == "FAILED"
    assert any("no readable Date header" in line for line in said), said


def test_runs_already_read_inside_the_overlap_are_not_read_again(
    fresh_server: Server, db_path: Path
) -> None:
    """The overlap window re-lists recent events; runs whose local state is that recent are skipped."""
    url = fresh_server.url
    seeded = seeded_and_pulled(url, db_path, runs=30, seed_value=13)
    baseline = int(pull(url, db_path)["requests"])
    targets = completed(seeded)[:3]
    move_to(url, targets, "CANCELLED")
    wait_for_state_events(url, targets, "CANCELLED")

    changed = pull(url, db_path)
    assert int(changed["requests"]) == baseline + 1  # one filter by id for the three runs
    assert {local_state(db_path, i) for i in targets} == {"CANCELLED"}
    # Same events, still inside the overlap: nothing to read.
    assert int(pull(url, db_path)["requests"]) == baseline

    # A newer change to one of them is read again.
    move_to(url, targets[:1], "FAILED")
    wait_for_state_events(url, targets[:1], "FAILED")
    again = pull(url, db_path)
    assert int(again["requests"]) == baseline + 1
    assert local_state(db_path, targets[0]) == "FAILED"
    assert_matches_server(db_path, url)


def _runs_at(url: str, deployment: str, when: str, n: int) -> list[str]:
    """Create ``n`` runs expected at ``when``, re-sending per-run failures (SQLite under load)."""
    with httpx.Client(base_url=url + "/", timeout=120) as c:
        body = [
            {
                "idempotency_key": str(uuid.uuid4()),
                "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}},
            }
            for _ in range(n)
        ]
        return [
            i
            for start in range(0, n, 100)
            for i in create_bulk(c, deployment, body[start : start + 100])
        ]


def test_runs_changing_state_inside_a_tie_are_not_skipped(
    fresh_server: Server, db_path: Path
) -> None:
    """Runs sharing one expected start are paged by offset; state changes between pages must not
    make that walk skip any.

    Ordered by the shared timestamp alone, ties come back in the server's storage order:
    SQLite keeps a row's place on UPDATE (rowid), PostgreSQL writes an updated row elsewhere,
    so runs that change state between two pages move and the offset walk skips others.
    """
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.store import Store
    from flowsync.sync import PullOptions
    from flowsync.sync import pull as pull_api

    url = fresh_server.url
    seeded = seed(url, runs=1, flows=1, deployments_per_flow=1)
    deployment = next(iter(seeded.deployments.values()))
    when = "2026-01-01T00:00:00+00:00"
    tied = _runs_at(url, deployment, when, 90)  # four and a half pages of 20
    assert len(tied) == 90
    rng = random.Random(31)
    tie_pages = 0

    def change_mid_tie(request: httpx.Request, _: int) -> None:
        nonlocal tie_pages
        if request.url.path.endswith("/flow_runs/filter"):
            window = json.loads(request.content).get("flow_runs", {}).get("expected_start_time", {})
            if window.get("after_") and window.get("after_") == window.get("before_"):
                tie_pages += 1
                if tie_pages == 2:  # between the first and the second page of the tie
                    move_to(url, rng.sample(tied, 45), "CANCELLED")

    options = PullOptions(concurrency=1, page_size=20)
    with (
        Store.writer(db_path) as store,
        PrefectClient(ApiSettings(url=url), transport=forwarding(change_mid_tie)) as client,
    ):
        pull_api(client, store, options)
    assert tie_pages >= 2
    local = {str(r[0]) for r in query(db_path, "SELECT id FROM flow_runs WHERE deleted_at IS NULL")}
    assert not set(tied) - local, f"{len(set(tied) - local)} of the tied runs were skipped"


def scheduled_at(url: str, flow_name: str, when: str) -> str:
    """A run of a new flow called ``flow_name``, SCHEDULED for ``when``; its id."""
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        flow = post_json(c, "flows/", {"name": flow_name})["id"]
        state = {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}
        return str(post_json(c, "flow_runs/", {"flow_id": flow, "state": state})["id"])


@pytest.mark.backends("sqlite")  # the ranges the pull asks for do not depend on the backend
def test_a_run_scheduled_in_the_year_9999_is_pulled_by_every_kind_of_pull(
    fresh_server: Server, db_path: Path
) -> None:
    """A range ending an hour (or a bucket) past the last run's expected start passed the
    last date there is: every full pass and daily check stopped with an OverflowError
    traceback (and Prefect's /flow_runs/history fails on a range ending there)."""
    url = fresh_server.url
    far = scheduled_at(url, "far-future", "9999-12-31T23:30:00+00:00")
    # alone on the server first (every run past the horizon), then among others
    for more in (0, 20):
        if more:
            seed(url, runs=more, flows=1, deployments_per_flow=1, days=3, seed_value=11)
        assert pull(url, db_path)["mode"] in ("full", "incremental")
        assert pull(url, db_path, "--verify")["mode"] == "incremental"
        assert pull(url, db_path, "--full")["mode"] == "full"
        assert local_state(db_path, far) == "SCHEDULED"
        assert_matches_server(db_path, url)


@pytest.mark.backends("sqlite")  # the bound is a plain comparison on either backend
def test_a_run_expected_before_1970_is_pulled_and_no_pull_lists_every_run_for_it(
    fresh_server: Server, db_path: Path
) -> None:
    """A run scheduled before 1970 (a negative timestamp) fell below every walk's lower bound:
    never read, and each pull after listed every run by offset to find it, saying it had no
    expected start."""
    url = fresh_server.url
    old = scheduled_at(url, "before-1970", "1969-06-01T00:00:00+00:00")
    seed(url, runs=20, flows=1, deployments_per_flow=1, days=3, seed_value=11)
    for extra in ((), ("--verify",), ("--full",)):
        result = run_cli("pull", "--api-url", url, "--db", str(db_path), *extra)
        assert result.exit_code == 0, result.output
        assert "no expected start time" not in result.output, result.output
        assert "outside the known time range differ" not in result.output, result.output
        assert local_state(db_path, old) == "SCHEDULED"
    assert_matches_server(db_path, url)


@pytest.mark.backends("sqlite")  # a restore is a copy of the server's database file here
def test_a_server_restored_from_a_backup_is_reconciled_by_the_next_pull(
    start_server: Any, tmp_path: Path
) -> None:
    """The server's database restored from a backup taken before the last pull, with as many
    runs as the file (one deleted, one created since): its events are all older than the
    cursor and no total differs, so the next pulls changed nothing and the file kept what the
    restore undid (a deleted run back, a new one gone, a state change undone) for up to a
    day. The server no longer holds the newest state event the last pull read: a full pass.
    Then idle past its event retention (none held): no restore, incremental pulls."""
    import sqlite3

    home, port, db = tmp_path / "server", free_port(), tmp_path / "runs.duckdb"
    backup = tmp_path / "backup"
    with start_server(home=home, port=port) as server:
        url = server.url
        seeded = seed(url, runs=30, flows=1, deployments_per_flow=1, days=3, seed_value=5)
        assert pull(url, db)["mode"] == "full"
    backup.mkdir()
    for part in home.glob("prefect.db*"):
        shutil.copy2(part, backup / part.name)
    with start_server(home=home, port=port) as server:
        done = completed(seeded)
        delete_runs(url, done[:1])
        move_to(url, done[1:2], "FAILED")
        wait_for_state_events(url, done[1:2], "FAILED")
        seed(url, runs=1, flows=1, deployments_per_flow=1, days=1, seed_value=6)
        assert pull(url, db)["mode"] == "incremental"
    for part in home.glob("prefect.db*"):
        part.unlink()
    for part in backup.iterdir():
        shutil.copy2(part, home / part.name)
    with start_server(home=home, port=port) as server:
        restored = pull(url, db)
        assert restored["mode"] == "full", restored
        assert "no longer holds the newest state event" in str(restored), restored
        assert_matches_server(db, url)
        assert pull(url, db)["mode"] == "incremental"  # and the pull after is as before
    # Idle longer than its event retention, the server holds no event at all: its newest
    # went last, as Prefect trims oldest first. Not a restore (every pull went full so).
    with sqlite3.connect(home / "prefect.db") as server_db:  # what db_vacuum leaves
        server_db.execute("DELETE FROM event_resources")
        server_db.execute("DELETE FROM events")
    server_db.close()
    with start_server(home=home, port=port) as server:
        for _ in range(2):
            assert pull(url, db)["mode"] == "incremental"
        assert_matches_server(db, url)


def test_history_parts_asked_at_once_come_back_in_their_order() -> None:
    """The parts are in flight ``concurrency`` at a time; the first part's answer, here the
    last to arrive, still comes first: the buckets are the ones one request would give."""
    from types import SimpleNamespace

    from flowsync.sync import runs as sync_runs

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def flow_run_history(lo: datetime, hi: datetime, interval: float) -> list[dict[str, Any]]:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        first = int((lo - start).total_seconds() // interval)
        time.sleep(0.2 if first == 0 else 0.05)
        with lock:
            in_flight[0] -= 1
        n = int((hi - lo).total_seconds() // interval)
        return [{"bucket": first + i} for i in range(n)] + [{"bucket": "past the part's end"}]

    ctx = SimpleNamespace(
        client=SimpleNamespace(flow_run_history=flow_run_history),
        options=SimpleNamespace(concurrency=3),
    )
    got = sync_runs.history_in_parts(ctx, start, 60.0, 10, [40_000.0] * 10)  # type: ignore[arg-type]
    assert [b["bucket"] for b in got] == list(range(10))
    assert most[0] == 3


def test_pages_by_id_in_flight_come_back_in_order_and_stop_with_the_caller() -> None:
    """Requests by id ``in_flight`` at a time, answers in the chunks' order even when the first
    arrives last, at most twice that many asked ahead; a caller that stops leaves the rest unsent."""
    from types import SimpleNamespace

    from flowsync.api import Page
    from flowsync.api.pagination import pages_by_id

    ids = [f"id-{i:03d}" for i in range(50)]
    sent: list[str] = []
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def filter_page(resource: str, body: dict[str, Any]) -> Page:
        chunk = body[resource]["id"]["any_"]
        with lock:
            sent.append(chunk[0])
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.15 if chunk[0] == "id-000" else 0.02)
        with lock:
            in_flight[0] -= 1
        return Page.from_rows([{"id": i} for i in chunk if i != "id-007"])  # one run gone

    client = SimpleNamespace(filter_page=filter_page)
    got = list(pages_by_id(client, "flow_runs", ids, 5, in_flight=3))  # type: ignore[arg-type]
    assert [chunk for chunk, _ in got] == [ids[i : i + 5] for i in range(0, 50, 5)]
    assert [o["id"] for _, page in got for o in page.rows] == [i for i in ids if i != "id-007"]
    assert most[0] == 3
    # A caller that stops after the first page: no more than 2 x 3 chunks were ever asked.
    sent.clear()
    walk = pages_by_id(client, "flow_runs", ids, 5, in_flight=3)  # type: ignore[arg-type]
    next(walk)
    walk.close()
    time.sleep(0.2)
    assert len(sent) <= 7  # the six asked ahead, and the one asked when the first was taken


def test_history_is_asked_in_parts_of_bounded_size(
    prefect: SeededServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's history query reads every run in its range (5.7 s for one request over a
    million runs on PostgreSQL); the pull asks for it in parts of about HISTORY_PART_ROWS runs."""
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.store import Store
    from flowsync.sync import PullOptions
    from flowsync.sync import pull as pull_api
    from flowsync.sync import runs as sync_runs

    monkeypatch.setattr(sync_runs, "HISTORY_PART_ROWS", 60)
    sizes: list[int] = []

    def count_history(request: httpx.Request, response: httpx.Response) -> None:
        if request.url.path.endswith("/flow_runs/history"):
            sizes.append(sum(int(s["count_runs"]) for b in response.json() for s in b["states"]))

    with (
        Store.writer(db_path) as store,
        PrefectClient(
            ApiSettings(url=prefect.url), transport=forwarding(after=count_history)
        ) as client,
    ):
        pull_api(client, store)  # full: the segment plan
        planned = list(sizes)
        pull_api(client, store, PullOptions(verify=True))  # the per-bucket check
    verified = sizes[len(planned) :]
    total = prefect.count()
    for asked in (planned, verified):
        assert len(asked) >= 3, asked
        assert sum(asked) >= total - 5  # runs far in the future or past may sit outside the range
        assert max(asked) <= 2 * 60, asked
    assert_matches_server(db_path, prefect.url)


@pytest.mark.backends("sqlite")  # the catalog walk does not depend on the backend
def test_a_deployment_deleted_while_another_is_created_is_found_by_the_next_pull(
    fresh_server: Server, tmp_path: Path
) -> None:
    """More deployments than a page, one deleted and one created between pulls: the walk
    stops at the cursor, yet the delete is found at once. The count check runs after the
    walk wrote the new deployment, so the counts differ (13 in the file, 12 on the server)
    and the full listing that follows marks the deleted one."""
    import flowsync
    from flowsync.config import ApiSettings
    from flowsync.sync import PullOptions
    from harness.seed import new_deployment

    url = fresh_server.url
    deps = [new_deployment(url, f"turn-{i}") for i in range(12)]
    db = tmp_path / "runs.duckdb"
    api = ApiSettings(url=url)
    options = PullOptions(page_size=5, overlap=timedelta(0))
    flowsync.pull(db, api=api, options=options)
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        assert c.delete(f"deployments/{deps[0]}").is_success
    new_deployment(url, "turn-new")
    gone = "SELECT deleted_at IS NOT NULL FROM deployments WHERE id = ?"
    flowsync.pull(db, api=api, options=options)
    assert query(db, gone, [deps[0]]) == [(True,)]
    assert query(db, "SELECT count(*) FROM deployments WHERE deleted_at IS NULL") == [(12,)]


def hourly_deployment(c: httpx.Client) -> str:
    """A new flow ``hourly`` and its deployment with an active hourly schedule: its id."""
    flow = post_json(c, "flows/", {"name": "hourly"})["id"]
    schedules = [{"schedule": {"interval": 3600}, "active": True}]
    body = {"name": "hourly", "flow_id": flow, "schedules": schedules}
    return str(post_json(c, "deployments/", body)["id"])


@pytest.mark.backends("sqlite")  # the catalog walk does not depend on the backend
def test_a_schedule_paused_past_the_walks_first_page_is_read_within_the_staleness_window(
    fresh_server: Server, tmp_path: Path
) -> None:
    """Pausing a deployment's schedule leaves its ``updated`` where it was (the schedule is a
    row of another table on the server): the walk by ``updated`` stops at its first page and
    never sees it. The whole collection is listed again once its last listing is older than
    ``LISTED_EVERY`` of the staleness window, so the pause reaches the file within it."""
    import flowsync
    from flowsync.config import ApiSettings
    from flowsync.sync import PullOptions
    from harness.seed import new_deployment

    url = fresh_server.url
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        first = hourly_deployment(c)
    for i in range(11):
        new_deployment(url, f"later-{i}")
    db, api = tmp_path / "runs.duckdb", ApiSettings(url=url)
    day = PullOptions(page_size=5, overlap=timedelta(0), staleness=timedelta(hours=24))
    server_date_past(url)  # the cursor is the server's Date: past every deployment
    flowsync.pull(db, api=api, options=day)
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        schedule = c.get(f"deployments/{first}").json()["schedules"][0]["id"]
        paused = c.patch(f"deployments/{first}/schedules/{schedule}", json={"active": False})
        assert paused.status_code == 204
    active = "SELECT CAST(schedules AS VARCHAR) FROM deployments WHERE id = ?"
    flowsync.pull(db, api=api, options=day)  # listed a moment ago: the walk alone
    assert json.loads(query(db, active, [first])[0][0])[0]["active"] is True
    time.sleep(1)
    flowsync.pull(db, api=api, options=replace(day, staleness=timedelta(seconds=1)))
    assert json.loads(query(db, active, [first])[0][0])[0]["active"] is False


Rows = tuple[dict[str, Any], dict[str, Any]]


def run_rows(server: Server, run_id: str) -> Rows:
    """A run's flow_run row and its current flow_run_state row, in the server's SQLite file."""
    import sqlite3

    con = sqlite3.connect(server.home / "prefect.db", timeout=60)
    con.row_factory = sqlite3.Row
    try:
        run = dict(con.execute("SELECT * FROM flow_run WHERE id = ?", [run_id]).fetchone())
        state = con.execute("SELECT * FROM flow_run_state WHERE id = ?", [run["state_id"]])
        return run, dict(state.fetchone())
    finally:
        con.close()


def scheduler_insert(server: Server, template: Rows, times: list[datetime]) -> list[str]:
    """Runs at ``times`` inserted as Prefect's scheduler inserts them
    (``models.deployments._insert_scheduled_flow_runs``: flow_run and flow_run_state rows,
    auto-scheduled, no orchestration, so no state event), copied from ``template`` (a run of
    the same deployment). Written to the server's SQLite file because the scheduler's insert
    fails in this test environment (SQLAlchemy 2.1: "Can't evaluate bulk DML statement", for
    ``POST /deployments/{id}/schedule`` and the scheduler service alike)."""
    import sqlite3

    def fmt(t: datetime) -> str:
        return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")

    run, state = template
    now = fmt(datetime.now(timezone.utc))
    ids: list[str] = []
    con = sqlite3.connect(server.home / "prefect.db", timeout=60)
    try:
        with con:
            for t in times:
                run_id, state_id = str(uuid.uuid4()), str(uuid.uuid4())
                details = {**json.loads(state["state_details"]), "flow_run_id": run_id}
                details["scheduled_time"] = t.isoformat()
                new_run = {
                    **run,
                    "id": run_id,
                    "name": f"scheduled-{run_id[:8]}",
                    "created": now,
                    "updated": now,
                    "idempotency_key": f"scheduled {run_id}",
                    "auto_scheduled": 1,
                    "expected_start_time": fmt(t),
                    "next_scheduled_start_time": fmt(t),
                    "state_id": state_id,
                    "state_timestamp": now,
                }
                new_state = {
                    **state,
                    "id": state_id,
                    "created": now,
                    "updated": now,
                    "timestamp": now,
                    "flow_run_id": run_id,
                    "state_details": json.dumps(details),
                }
                for table, row in (("flow_run", new_run), ("flow_run_state", new_state)):
                    con.execute(
                        f"INSERT INTO {table} ({', '.join(row)}) "
                        f"VALUES ({', '.join('?' * len(row))})",
                        list(row.values()),
                    )
                ids.append(run_id)
        return ids
    finally:
        con.close()


def pause_and_resume(c: httpx.Client, deployment: str) -> None:
    post_json(c, f"deployments/{deployment}/pause_deployment", None)
    post_json(c, f"deployments/{deployment}/resume_deployment", None)


def schedule_off_and_on(c: httpx.Client, deployment: str) -> None:
    """The deployment's schedule switched off and on again: a row of another table on the
    server (the deployment's ``updated`` stays), and Prefect deletes the scheduled runs."""
    schedule = c.get(f"deployments/{deployment}").json()["schedules"][0]["id"]
    for active in (False, True):
        for attempt in range(8):  # a busy SQLite server answers 503, its transaction undone
            answer = c.patch(
                f"deployments/{deployment}/schedules/{schedule}", json={"active": active}
            )
            if answer.status_code != 503:
                break
            time.sleep(0.2 * (attempt + 1))
        assert answer.status_code == 204, answer.text


def scheduled_by_the_scheduler(server: Server) -> tuple[str, Rows, list[datetime], list[str]]:
    """An hourly deployment whose next five runs its scheduler inserted (``scheduler_insert``,
    from a template run made and deleted here): the deployment, the template, the runs'
    times and ids."""
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    times = [start + timedelta(hours=h) for h in range(2, 7)]
    with httpx.Client(base_url=server.url + "/", timeout=60) as c:
        deployment = hourly_deployment(c)
        made = post_json(
            c,
            f"deployments/{deployment}/create_flow_run",
            {"state": {"type": "SCHEDULED", "name": "Scheduled"}},
        )["id"]
    # Its state event stored first: a first pull's events cursor is then that event's time, as
    # on a server with history (with none stored yet it is a day back, and every deployment
    # looks changed to the next pull: whether a test saw a gap hung on the event persister).
    wait_for_state_events(server.url, [made], "SCHEDULED")
    template = run_rows(server, made)
    inserted = scheduler_insert(server, template, times)
    delete_runs(server.url, [made])
    return deployment, template, times, inserted


@dataclass
class SchedulerCase:
    """A server whose hourly deployment the scheduler filled (``scheduled_by_the_scheduler``)
    and the file to pull it into with no overlap."""

    url: str
    deployment: str
    template: Rows
    times: list[datetime]
    first: list[str]
    db: Path
    api: Any
    options: Any

    def pull(self, verify: bool = False) -> int:
        """A pull with this case's options; how many requests it made."""
        import flowsync

        pulled = flowsync.pull(self.db, api=self.api, options=replace(self.options, verify=verify))
        return pulled.result.requests


def scheduler_case(server: Server, tmp_path: Path, first_pull: bool = True) -> SchedulerCase:
    """A ``SchedulerCase`` and, a whole second later, its first pull, checked against the
    server: the cursor (the server's Date, in whole seconds) is past the deployments'
    creation, so the next pull knows a deployment changed only from what changed it."""
    from flowsync.config import ApiSettings
    from flowsync.sync import PullOptions

    deployment, template, times, first = scheduled_by_the_scheduler(server)
    db, api = tmp_path / "runs.duckdb", ApiSettings(url=server.url)
    options = PullOptions(overlap=timedelta(0))
    case = SchedulerCase(server.url, deployment, template, times, first, db, api, options)
    server_date_past(server.url)
    if first_pull:
        case.pull()
        assert_matches_server(db, server.url)
    return case


@pytest.mark.backends("sqlite")  # what the scheduler writes does not depend on the backend
@pytest.mark.parametrize("replace_runs", [pause_and_resume, schedule_off_and_on])
@pytest.mark.parametrize("excluded", [2000, 2], ids=["new-listed", "all-listed"])
def test_scheduled_runs_replaced_without_events_reach_the_next_pull(
    fresh_server: Server,
    tmp_path: Path,
    replace_runs: Any,
    excluded: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pausing a deployment (or switching its schedule off) deletes its auto-scheduled runs,
    and after it is resumed the scheduler inserts them again: new ids, the same times, the
    same state. Neither emits a state event, the total stays where it was and every history
    bucket holds as many runs of each state as before, so neither the count check nor the
    daily per-bucket check sees it. The next pull must still mark the old runs deleted and
    read the new ones. (``all-listed``: a deployment holding more scheduled runs than a
    request names to leave out, as after a backfill: all of them are listed.)"""
    import flowsync.sync.runs

    monkeypatch.setattr(flowsync.sync.runs, "EXCLUDED_IDS", excluded)
    case = scheduler_case(fresh_server, tmp_path)
    with httpx.Client(base_url=case.url + "/", timeout=60) as c:
        replace_runs(c, case.deployment)
    assert not set(case.first) & set(server_runs(case.url))  # Prefect deleted them
    again = scheduler_insert(fresh_server, case.template, case.times)  # the scheduler's next loop
    assert set(server_runs(case.url)) == set(again)
    case.pull()
    case.pull(verify=True)
    assert_matches_server(case.db, case.url)


@pytest.mark.backends("sqlite")  # the cursors do not depend on the backend
def test_a_deployment_changed_after_the_last_state_event_is_looked_at_once_not_every_pull(
    fresh_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment edited after a pull, on a quiet server (no state event since): the next
    pull lists its scheduled runs (the edit may have replaced them), and the pulls after it
    ask no more than a pull before the edit. (The step's cursor was the events cursor, which
    stays at the newest state event: every pull listed them again, all of them for a
    deployment holding more than a request leaves out, 509 requests and 208 s a pull at a
    million runs.)"""
    import flowsync.sync.runs

    # Its five scheduled runs listed in full when looked at, as a deployment's thousands are.
    monkeypatch.setattr(flowsync.sync.runs, "EXCLUDED_IDS", 2)
    case = scheduler_case(fresh_server, tmp_path)
    quiet = case.pull()
    with httpx.Client(base_url=case.url + "/", timeout=60) as c:
        answer = c.patch(f"deployments/{case.deployment}", json={"description": "edited"})
        assert answer.status_code == 204, answer.text
    looked = case.pull()
    assert looked > quiet
    assert [case.pull(), case.pull()] == [quiet, quiet]
    assert_matches_server(case.db, case.url)


def older_pull(db: Path, api: Any, options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull as a flowsync from before the scheduled-runs step left the file: no step 3a,
    and the sync_state keys it does not know as they were (the cursors it knows moved)."""
    import flowsync
    import flowsync.sync.runs
    from flowsync.store import Store, sync_log

    def own_keys() -> list[tuple[str, str]]:
        with Store.reader(db, live=True) as store:
            rows = store.execute("SELECT key, CAST(value AS VARCHAR) FROM sync_state").rows()
        return [(k, v) for k, v in rows if k == "flow_runs.rescheduled_cursor"]

    kept = own_keys() if db.exists() else []
    with monkeypatch.context() as m:
        m.setattr(flowsync.sync.runs, "rescheduled", lambda ctx: None)
        flowsync.pull(db, api=api, options=options)
    left = own_keys()
    with Store.writer(db) as store, store.transaction():
        for key, _ in left:
            sync_log.delete_state(store, key)
        for key, value in kept:
            sync_log.set_state(store, key, json.loads(value))


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("first", ["ours", "older"])
def test_an_older_flowsyncs_pull_in_between_does_not_hide_replaced_scheduled_runs(
    fresh_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """A deployment paused and resumed after a pull (its scheduled runs replaced, no event),
    then a pull by an older flowsync (one without the scheduled-runs step): it moves the runs
    cursor past the change without looking. The next pull of this flowsync must still look at
    that deployment (it looked only at deployments changed since the runs cursor: the new runs
    never reached the file, the deleted ones stayed live, --verify did not see it).
    (``older``: the file's first pull was an older flowsync's too: no pull of this one ever
    took the step, so every deployment is looked at.)"""
    case = scheduler_case(fresh_server, tmp_path, first_pull=first == "ours")
    if first == "older":
        older_pull(case.db, case.api, case.options, monkeypatch)
    with httpx.Client(base_url=case.url + "/", timeout=60) as c:
        pause_and_resume(c, case.deployment)
    again = scheduler_insert(fresh_server, case.template, case.times)
    server_date_past(case.url)  # the older pull's cursor past the change
    older_pull(case.db, case.api, case.options, monkeypatch)
    case.pull()
    assert_matches_server(case.db, case.url)
    assert set(again) <= set(local_runs(case.db))


@pytest.mark.backends("sqlite")  # what the scheduler writes does not depend on the backend
def test_a_run_the_scheduler_inserts_while_another_is_deleted_reaches_the_next_pull(
    fresh_server: Server, tmp_path: Path
) -> None:
    """Between two pulls the scheduler inserts an upcoming run (no state event, its deployment
    unchanged) and an old finished run is deleted (Prefect's flow-run vacuum, a person): the
    total stays where it was, so the count check saw nothing and the next pull kept the deleted
    run live and lacked the new one until the daily per-bucket check. The pull right after
    must match the server."""
    # The seeded deployments made before the first pull's cursor too: the next pull knows no
    # deployment changed, as on a server whose deployments were made long ago.
    seeded = seed(fresh_server.url, runs=20, flows=1, deployments_per_flow=1, seed_value=11)
    case = scheduler_case(fresh_server, tmp_path)
    delete_runs(case.url, completed(seeded)[:1])  # the vacuum's hourly delete of an old run
    added = scheduler_insert(fresh_server, case.template, [case.times[-1] + timedelta(hours=1)])
    case.pull()
    assert set(added) <= set(local_runs(case.db))
    assert_matches_server(case.db, case.url)


@pytest.mark.backends("sqlite")  # what the scheduler writes does not depend on the backend
@pytest.mark.xfail(
    strict=True,
    reason="an upcoming scheduled run deleted and inserted again by the scheduler (new id, "
    "same time and state, no event, deployment unchanged) leaves the total, the SCHEDULED "
    "count and every history bucket as they were: only the rolling re-read finds it (<= W)",
)
def test_an_upcoming_run_deleted_and_inserted_again_by_the_scheduler_reaches_the_next_pull(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A person deletes an upcoming scheduled run (the UI's delete); the scheduler's next loop
    inserts the same slot again (its idempotency key is free): a new id at the same time, in
    the same state, without a state event, the deployment's ``updated`` unchanged. The pull
    after must hold the new run and mark the deleted one."""
    case = scheduler_case(fresh_server, tmp_path)
    delete_runs(case.url, case.first[:1])
    scheduler_insert(fresh_server, case.template, case.times[:1])
    case.pull()
    case.pull(verify=True)
    assert_matches_server(case.db, case.url)


def heartbeat_from_a_clock_ahead(url: str, run: str, ahead: timedelta) -> None:
    """A ``prefect.flow-run.heartbeat`` of ``run`` as Prefect's flow engine emits it (its
    ``PREFECT_RUNNER_HEARTBEAT_FREQUENCY``), stamped by the clock of the machine running the
    flow, ``ahead`` of the server's; returns once the server has stored it."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": (datetime.now(timezone.utc) + ahead).isoformat(),
        "event": "prefect.flow-run.heartbeat",
        "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"},
    }
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        post_json(c, "events", [event])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = {
                "filter": {
                    "id": {"id": [event["id"]]},
                    "occurred": {
                        "since": (datetime.now(timezone.utc) - timedelta(days=1)).isoformat(),
                        "until": (datetime.now(timezone.utc) + ahead * 2).isoformat(),
                    },
                },
                "limit": 1,
            }
            if c.post("events/filter", json=body).json()["events"]:
                return
            time.sleep(0.3)
    raise AssertionError("the heartbeat was not stored")


def test_a_heartbeat_stamped_ahead_does_not_move_the_events_cursor_past_a_state_change(
    fresh_server: Server, db_path: Path
) -> None:
    """Behind a proxy whose Date is 15 minutes ahead (handled: the cursor follows the events'
    own clock), a flow's heartbeat event, stamped by the clock of the machine running the
    flow (15 minutes ahead too), is a ``prefect.flow-run.*`` event but not a state change on
    the server's clock. Taken as the newest event, it put the cursor 15 minutes ahead and
    the next window started 5 minutes after the pull: the state change made just after it
    was never asked for."""
    url = fresh_server.url
    proxy = date_ahead(timedelta(minutes=15))
    seeded = seed(url, runs=20, flows=1, deployments_per_flow=1, days=3, seed_value=11)
    assert pull_through(url, db_path, proxy) == "full"
    heartbeat_from_a_clock_ahead(url, completed(seeded)[0], timedelta(minutes=15))
    assert pull_through(url, db_path, proxy) == "incremental"
    run = completed(seeded)[1]
    move_to(url, [run], "FAILED")
    wait_for_state_events(url, [run], "FAILED")
    caught_up(url, db_path, run, proxy, pulls=2)


@pytest.mark.backends("sqlite")  # what the scheduler writes does not depend on the backend
def test_scheduled_runs_replaced_behind_a_proxy_whose_clock_is_ahead_reach_the_next_pull(
    fresh_server: Server, db_path: Path
) -> None:
    """Every answer's Date is 15 minutes ahead of the server's clock (a proxy's own). A
    deployment paused and resumed right after a pull has its scheduled runs replaced (no
    event; total, SCHEDULED count and buckets unchanged): the next pull must look at it,
    though its ``updated`` (the server's clock) is older than that pull's Date less the
    overlap."""
    url = fresh_server.url
    proxy = date_ahead(timedelta(minutes=15))
    deployment, template, times, _ = scheduled_by_the_scheduler(fresh_server)
    time.sleep(1)
    assert pull_through(url, db_path, proxy) == "full"
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        pause_and_resume(c, deployment)
    again = scheduler_insert(fresh_server, template, times)
    assert pull_through(url, db_path, proxy) == "incremental"
    assert set(again) <= set(local_runs(db_path))
    assert_matches_server(db_path, url)


def test_a_throttled_events_query_fails_the_pull_and_keeps_the_cursor(
    fresh_server: Server, db_path: Path
) -> None:
    """Two finished runs sharing one expected start swap their states (COMPLETED and FAILED):
    only their state events say so (the per-bucket counts by state type stay equal). The
    server answers 429 to every events query: the events API is there, the pull cannot read
    it. The pull fails saying so and leaves its cursor where it was, so the next one reads
    those events; it must not finish as if the server had no events API (refreshing only
    unfinished runs and comparing counts) and move the cursor past the swap."""

    url = fresh_server.url
    seeded = seed(url, runs=1, flows=1, deployments_per_flow=1)
    deployment = next(iter(seeded.deployments.values()))
    when = "2026-01-01T00:00:00+00:00"
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        one, two = create_bulk(
            c,
            deployment,
            [
                {
                    "idempotency_key": str(uuid.uuid4()),
                    "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}},
                }
                for _ in range(2)
            ],
        )
    move_to(url, [one], "COMPLETED")
    move_to(url, [two], "FAILED")
    wait_for_state_events(url, [one], "COMPLETED")
    wait_for_state_events(url, [two], "FAILED")
    pull(url, db_path)
    assert_matches_server(db_path, url)
    move_to(url, [one], "FAILED")
    move_to(url, [two], "COMPLETED")
    wait_for_state_events(url, [one], "FAILED")
    wait_for_state_events(url, [two], "COMPLETED")
    cursor_before = query(db_path, "SELECT key, value FROM sync_state WHERE key LIKE 'flow_runs.%'")

    stopped = pull_with_events_throttled(url, db_path)
    assert "429" in str(stopped) and "events" in str(stopped), stopped
    after = query(db_path, "SELECT key, value FROM sync_state WHERE key LIKE 'flow_runs.%'")
    assert after == cursor_before
    pull(url, db_path)  # the server answers again: the swap is read
    assert_matches_server(db_path, url)


@pytest.mark.backends("sqlite")  # what the scheduler writes does not depend on the backend
def test_scheduled_runs_replaced_while_a_full_pass_was_stopped_reach_the_pull_that_resumes_it(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A first pull (a full pass) walks every run, then stops (the server answers 503 from
    then on): the pass stays, to resume. Meanwhile the deployment is paused and resumed (its
    scheduled runs replaced: new ids, the same times and state, no event). The pull that
    resumes the pass reads the deployment's new stamp; its walk is done, so it never sees the
    new runs, and the count, the SCHEDULED count and every bucket are as before. It must
    still look at that deployment (it recorded the new stamp as looked at: no later pull
    looked either, and the file kept the deleted runs live until the rolling re-read)."""
    from flowsync.api import PrefectClient, RetryPolicy
    from flowsync.errors import ApiError
    from flowsync.store import Store, sync_log
    from flowsync.sync import pull as pull_api
    from flowsync.sync.runs import FULL_PASS

    case = scheduler_case(fresh_server, tmp_path, first_pull=False)

    def after_the_walk(request: httpx.Request, n: int) -> httpx.Response | None:
        # The runs' count the pass asks after its walk (runs without an expected start).
        if request.url.path.endswith("/flow_runs/count") and b"expected_start_time" in (
            request.content
        ):
            return httpx.Response(503, json={"exception_message": "Service Unavailable"})
        return None

    with (
        Store.writer(case.db) as store,
        PrefectClient(
            case.api,
            transport=forwarding(after_the_walk),
            retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01),
        ) as client,
        pytest.raises(ApiError),
    ):
        pull_api(client, store, case.options)
    with Store.reader(case.db, live=True) as reader:
        stopped = sync_log.get_state(reader, FULL_PASS)
    assert stopped and all(s["done"] for s in stopped["segments"])  # walked, then stopped
    assert set(case.first) <= set(local_runs(case.db))

    with httpx.Client(base_url=case.url + "/", timeout=60) as c:
        pause_and_resume(c, case.deployment)
    again = scheduler_insert(fresh_server, case.template, case.times)
    case.pull()  # resumes the pass
    assert_matches_server(case.db, case.url)
    case.pull()
    assert set(again) <= set(local_runs(case.db))
    assert_matches_server(case.db, case.url)


@pytest.mark.backends("sqlite")  # the walk's paging does not depend on the backend
def test_a_run_deleted_while_the_first_walk_pages_through_a_tie_loses_no_other_run(
    fresh_server: Server, tmp_path: Path
) -> None:
    """More than a page of runs share one expected start (a backfill, a bulk create): the
    walk pages through them by offset. One of a page is deleted before the next page is
    asked: every later run moves up a place, and the one at the page's edge was never
    read. The deleted run stays live in the file (it was read), so the total, the
    SCHEDULED count and every bucket (one time, one state) agree with the server's: no
    later pull found the missing run (nor the deleted one) until the rolling re-read, and
    ``--verify`` did not either. The pull must end holding every run the server has."""
    import flowsync
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.store import Store
    from flowsync.sync import PullOptions
    from flowsync.sync import pull as pull_api

    url = fresh_server.url
    seeded = seed(url, runs=1, flows=1, deployments_per_flow=1)
    deployment = next(iter(seeded.deployments.values()))
    when = "2026-01-01T00:00:00+00:00"
    scheduled = {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        tie = create_bulk(
            c,
            deployment,
            [{"idempotency_key": str(uuid.uuid4()), "state": scheduled} for _ in range(100)],
        )
    # Their events stored, and the pulls' windows after them: runs made long ago, as a
    # backfill's (the next pull's events window would read them again otherwise).
    wait_for_state_events(url, tie, "SCHEDULED")
    server_date_past(url)
    deleted: list[str] = []
    read: set[str] = set()  # the runs the walk has read

    def delete_one_inside_the_tie(request: httpx.Request, response: httpx.Response) -> None:
        if deleted or not request.url.path.endswith("/flow_runs/filter"):
            return
        body = json.loads(request.content)
        rows = response.json()
        read.update(r["id"] for r in rows)
        window = body.get("flow_runs", {}).get("expected_start_time", {})
        if body.get("sort") != "ID_DESC" or window.get("after_") != window.get("before_"):
            return
        # The run first on the next page: skipped once a run of this page goes, unless the
        # walk's first page (the server's own order of the tie) happened to hold it.
        following = {**body, "offset": body["offset"] + len(rows), "limit": 1}
        with httpx.Client(base_url=url + "/", timeout=60) as c:
            edge = c.post("flow_runs/filter", json=following).json()
        if edge and edge[0]["id"] not in read:
            deleted.append(rows[0]["id"])
            delete_runs(url, deleted)

    api = ApiSettings(url=url)
    options = PullOptions(page_size=20, overlap=timedelta(0))
    db = tmp_path / "runs.duckdb"
    with (
        Store.writer(db) as store,
        PrefectClient(api, transport=forwarding(after=delete_one_inside_the_tie)) as client,
    ):
        pull_api(client, store, options)
    assert deleted, "the walk never paged through the tie"
    flowsync.pull(db, api=api, options=options)
    flowsync.pull(db, api=api, options=replace(options, verify=True))
    assert_matches_server(db, url)
