"""The pull against a production-shaped server: PostgreSQL, Redis, two API workers.

``prefect server start --workers 2`` load-balances requests over two processes
and runs the background services (the event persister among them) in a third,
so consecutive pages of one walk, and an event and the read after it, come
from different processes. The pulled DB must still equal the server.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest

from harness.seed import delete_runs, seed, set_states
from harness.server import Server
from tests.helpers import local_state, query, run_cli, scalar, wait_for_state_events
from tests.server_truth import assert_matches_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def pull(url: str, db: Path, *extra: str) -> dict[str, object]:
    result = run_cli("pull", "--api-url", url, "--db", str(db), "--json", *extra)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_full_then_incremental_pull_against_two_workers(
    two_workers: Server, tmp_path: Path
) -> None:
    url = two_workers.url
    assert two_workers.workers == 2
    seeded = seed(url, runs=600, flows=3, deployments_per_flow=2, seed_value=21)
    db = tmp_path / "runs.duckdb"
    first = pull(url, db, "--concurrency", "4")
    assert first["mode"] == "full"
    assert_matches_server(db, url)

    ids = list(seeded.runs)
    rng = random.Random(22)
    changed = rng.sample([i for i, s in seeded.runs.items() if s == "COMPLETED"], 15)
    deleted = rng.sample([i for i in ids if i not in changed], 9)
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        set_states(c, changed, "CANCELLED", "Cancelled")
    delete_runs(url, deleted)
    new = seed(url, runs=20, flows=1, deployments_per_flow=1, seed_value=23)
    # The services process stores events on its own schedule: wait until it has.
    wait_for_state_events(url, changed, "CANCELLED")

    second = pull(url, db)
    assert second["mode"] == "incremental"
    assert_matches_server(db, url)
    marked = {str(r[0]) for r in query(db, "SELECT id FROM flow_runs WHERE deleted_at IS NOT NULL")}
    assert marked == set(deleted)
    assert {local_state(db, i) for i in changed} == {"CANCELLED"}
    assert set(new.runs) <= {str(r[0]) for r in query(db, "SELECT id FROM flow_runs")}

    # --full with four pages in flight over both workers finds nothing to fix.
    third = pull(url, db, "--full", "--concurrency", "4")
    assert third["marked_deleted"] == 0
    assert_matches_server(db, url)
    assert scalar(db, "SELECT count(*) - count(DISTINCT id) FROM flow_runs") == 0
