"""flowsync against every Prefect server version a team may run (3.0 to 3.9).

Each version runs from its own virtualenv (``harness.server``, built once
under ``~/.cache/flowsync-test-servers``). Which versions: the environment
variable ``FLOWSYNC_TEST_SERVER_VERSIONS`` (``ci``, the default: the oldest and
the newest supported; ``all``: every minor's latest patch, as
``scripts/check --servers all`` sets it; or a list such as ``3.4,3.6.29``).
On each: a full pull is exact, an incremental pull after state changes and
deletions is exact, the reports run, ``status`` shows the version, and a
delete + set_state policy applies through the CLI: with the bulk endpoints
(3.6.16+), or on older servers one call per run (a rule that forces a state is
refused there first, in one line, and ``plan`` says so); every run's own answer
(ABORT, ACCEPT, REJECT with another state, deleted; inside one HTTP 200 on the bulk
path) is audited as that release gives it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.seed import Seeded, delete_runs, seed, set_states
from harness.server import Server, server_versions, version_tuple
from tests.apply_cases import (
    deployment,
    failed_runs_to_reschedule,
    outcomes,
    policy_file,
    purge,
    runs,
    tagged,
)
from tests.helpers import (
    outside,
    pulled_db,
    query,
    run_cli,
    server_date_past,
    wait_for_state_events,
)
from tests.server_truth import assert_matches_server, server_runs

BULK_SINCE = (3, 6, 16)


@dataclass
class Versioned:
    server: Server
    version: str
    seeded: Seeded
    db: Path

    @property
    def url(self) -> str:
        return self.server.url

    def pull(self, *args: str) -> dict[str, object]:
        result = run_cli("pull", "--api-url", self.url, "--db", str(self.db), "--json", *args)
        assert result.exit_code == 0, result.output
        summary: dict[str, object] = json.loads(result.stdout)
        return summary


@pytest.fixture(scope="module", params=server_versions())
def versioned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, start_server: Any
) -> Iterator[Versioned]:
    """A server of one version, seeded, and a file pulled from it once."""
    version = str(request.param)
    home = tmp_path_factory.mktemp(f"prefect-{version}")
    with start_server(home=home, version=version) as server:
        seeded = seed(server.url, runs=80, flows=2, deployments_per_flow=2, days=10, seed_value=13)
        db = pulled_db(server.url, tmp_path_factory.mktemp(f"db-{version}"))
        yield Versioned(server, version, seeded, db)


def test_full_pull_is_exact(versioned: Versioned) -> None:
    assert_matches_server(versioned.db, versioned.url)
    assert query(versioned.db, "SELECT count(*) FROM flows")[0][0] == 2


def test_incremental_after_changes_and_deletions_is_exact(versioned: Versioned) -> None:
    versioned.pull()  # whatever an earlier test changed
    live = server_runs(versioned.url)
    completed = [i for i, s in live.items() if s == "COMPLETED"]
    failed, gone = completed[:3], completed[3:6]
    with httpx.Client(base_url=versioned.url + "/", timeout=60) as c:
        set_states(c, failed, "FAILED", "Failed")
    wait_for_state_events(versioned.url, failed, "FAILED")
    delete_runs(versioned.url, gone)
    summary = versioned.pull()
    assert summary["mode"] == "incremental"
    assert_matches_server(versioned.db, versioned.url)
    marked = query(
        versioned.db,
        "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL "
        "AND id IN (SELECT unnest(CAST(? AS UUID[])))",
        [gone],
    )[0][0]
    assert marked == len(gone)


def test_reports_and_status(versioned: Versioned) -> None:
    for report in ("failures", "durations", "errors", "health"):
        result = run_cli("report", report, "--db", str(versioned.db), "--format", "json")
        assert result.exit_code == 0, f"report {report}: {result.output}"
    status = json.loads(run_cli("status", "--db", str(versioned.db), "--json").stdout)
    assert status["server"]["version"] == versioned.version
    assert status["server"]["bulk"] is (version_tuple(versioned.version) >= BULK_SINCE)


POLICY = """version: 1
max_actions: 1000
rules:
  - name: purge-completed
    action: delete
    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = 'COMPLETED'
  - name: cancel-scheduled
    action: set_state
    state: {type: CANCELLED, name: Cancelled}
    force: true
    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = 'SCHEDULED'
"""


def test_apply_delete_and_set_state(versioned: Versioned, tmp_path: Path) -> None:
    versioned.pull()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    before = server_runs(versioned.url)
    result = run_cli(
        "apply", str(policy), "--db", str(versioned.db), "--api-url", versioned.url, "--yes",
        "--json",
    )  # fmt: skip
    if version_tuple(versioned.version) < BULK_SINCE:
        # The plan says which calls apply will make, from the server the last pull saw.
        planned = run_cli("plan", str(policy), "--db", str(versioned.db))
        assert (
            "apply path: per-run" in planned.stdout
            and "no server-side state guard" in planned.stdout
        )
        # No bulk endpoints: a forced state cannot be guarded per run, so that is refused
        # before any call, in one line that says why; nothing changed.
        assert result.exit_code == 7, result.output
        assert "3.6.16" in result.stderr and versioned.version in result.stderr
        assert "force" in result.stderr and "Is this a Prefect API URL" not in result.output
        assert server_runs(versioned.url) == before
        # Without force, apply takes the per-run path (DELETE / set_state per run), and says so.
        policy.write_text(POLICY.replace("force: true", "force: false"))
        result = run_cli(
            "apply", str(policy), "--db", str(versioned.db), "--api-url", versioned.url, "--yes",
            "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["result"]["path"].startswith("per-run")
    assert result.exit_code == 0, result.output
    after = server_runs(versioned.url)
    assert "COMPLETED" not in after.values() and "SCHEDULED" not in after.values()
    assert sum(s == "CANCELLED" for s in after.values()) == sum(
        s in ("CANCELLED", "SCHEDULED") for s in before.values()
    )
    versioned.pull()
    assert_matches_server(versioned.db, versioned.url)


@dataclass
class Polled:
    """Three new deployments of 60 scheduled runs each, a day ahead, pulled twice: their
    ids, ``later`` (when their runs start) and the second pull's summary (nothing changed)."""

    deployments: list[str]
    later: datetime
    quiet: dict[str, Any]

    def poll(self, url: str) -> list[str]:
        """A worker's poll of the deployments (``get_scheduled_flow_runs``); the ones whose
        ``updated`` it moved (Prefect before 3.6.11)."""
        with httpx.Client(base_url=url + "/", timeout=60) as c:
            before = {d: c.get(f"deployments/{d}").json()["updated"] for d in self.deployments}
            polled = c.post(
                "deployments/get_scheduled_flow_runs",
                json={
                    "deployment_ids": self.deployments,
                    "scheduled_before": self.later.isoformat(),
                },
            )
            assert polled.status_code == 200, polled.text
            time.sleep(1)  # Prefect marks the deployments polled after it answers
            return [
                d
                for d in self.deployments
                if c.get(f"deployments/{d}").json()["updated"] != before[d]
            ]


# Scheduled runs a polled deployment holds: more than a page of ids the scheduled-runs step
# excludes once EXCLUDED_IDS is lowered to a third of it; each is one POST on a server before
# 3.6.16 (no bulk create: 150 a deployment took 3.0.11 about 18 s a test).
RUNS_A_DEPLOYMENT = 60


def scheduled_and_pulled(versioned: Versioned, prefix: str) -> Polled:
    """``Polled``: the deployments made (their runs a day ahead), then two pulls."""
    from harness.seed import create_bulk, new_deployment

    url = versioned.url
    deployments = [new_deployment(url, f"{prefix}-{uuid.uuid4().hex[:8]}") for _ in range(3)]
    later = datetime.now(timezone.utc) + timedelta(days=1)
    with httpx.Client(base_url=url + "/", timeout=120) as c:
        for deployment in deployments:
            payload = [
                {
                    "idempotency_key": str(uuid.uuid4()),
                    "state": {
                        "type": "SCHEDULED",
                        "name": "Scheduled",
                        "state_details": {
                            "scheduled_time": (later + timedelta(hours=i)).isoformat()
                        },
                    },
                }
                for i in range(RUNS_A_DEPLOYMENT)
            ]
            for k in range(0, len(payload), 50):
                create_bulk(c, deployment, payload[k : k + 50])
    server_date_past(url)  # the cursor (the server's Date) past the deployments' creation
    versioned.pull("--overlap", "0")
    server_date_past(url)
    return Polled(deployments, later, versioned.pull("--overlap", "0"))


def test_a_pull_after_worker_polls_alone_asks_no_more_than_a_quiet_one(
    versioned: Versioned,
) -> None:
    """A worker (or ``serve``) polls its deployments every few seconds, and Prefect before
    3.6.11 moves a polled deployment's ``updated`` with each poll (``mark_deployments_ready``
    leaves it to the column's ``onupdate``). A pull after polls alone must not list all
    their scheduled runs (100 a deployment by default, one request per 200, every pull): it
    asks at most one request more than a pull with nothing changed (the server's scheduled
    runs of those deployments the file lacks: none)."""
    polled = scheduled_and_pulled(versioned, "polled")
    moved = polled.poll(versioned.url)
    after_polls = versioned.pull("--overlap", "0")
    assert int(str(after_polls["requests"])) <= int(str(polled.quiet["requests"])) + 1, (
        f"{len(moved)} of {len(polled.deployments)} deployments' `updated` moved with the poll"
    )
    assert_matches_server(versioned.db, versioned.url)


@pytest.mark.xfail(
    strict=True,
    reason="Prefect before 3.6.11 moves a polled deployment's `updated` on every worker poll: "
    "its change stamp differs at every pull, and a deployment holding more than EXCLUDED_IDS "
    "scheduled runs has all of them listed again (200 a request) by every pull",
)
def test_worker_polls_alone_never_relist_a_deployment_holding_more_than_the_excluded_ids(
    versioned: Versioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the test above, with deployments holding more scheduled runs than one request of
    the scheduled-runs step may name (``EXCLUDED_IDS``, 2,000; 20 here, so that 60 runs a
    deployment stand for a backfill of thousands): polls alone change nothing in the file,
    so the pull after them asks no more than a quiet one, plus one request."""
    from flowsync.sync import runs

    if version_tuple(versioned.version) >= (3, 6, 11):
        pytest.skip("Prefect 3.6.11+ leaves `updated` as it was on a poll")
    monkeypatch.setattr(runs, "EXCLUDED_IDS", RUNS_A_DEPLOYMENT // 3)
    polled = scheduled_and_pulled(versioned, "backfilled")
    polled.poll(versioned.url)
    after_polls = versioned.pull("--overlap", "0")
    quiet = polled.quiet["requests"]
    assert int(str(after_polls["requests"])) <= int(str(quiet)) + 1, (
        f"quiet pull: {quiet} requests; after polls alone: {after_polls['requests']}"
    )
    assert_matches_server(versioned.db, versioned.url)


def test_apply_audits_each_runs_own_answer_as_this_version_gives_it(
    versioned: Versioned, tmp_path: Path
) -> None:
    """An HTTP 200 from bulk_set_state or bulk_delete carries one result a run (and on a
    server before 3.6.16 each per-run call answers for its run), and on every release apply
    reads each as that release answers it: without ``force``, Prefect aborts rescheduling a
    run with no deployment (ABORT, the run left as it was: ``aborted``) and accepts the
    others (``accepted``); Cancelling on a scheduled run with no infrastructure is answered
    REJECT carrying the Cancelled state it set instead (``replaced``); the runs deleted are
    read run by run (``deleted``). The server shows exactly what the audit says, and nothing
    else changed."""
    server = versioned.server
    (tmp_path / "r").mkdir()
    (tmp_path / "db").mkdir()
    orphans, deployed, _, _ = failed_runs_to_reschedule(server, tmp_path / "r", "bulk-rerun")
    dep = deployment(server)
    scheduled = runs(server, dep, 3, "SCHEDULED", "bulk-cancelling")
    completed = runs(server, dep, 3, "COMPLETED", "bulk-purge")
    wait_for_state_events(versioned.url, scheduled, "SCHEDULED")
    wait_for_state_events(versioned.url, completed, "COMPLETED")
    db = pulled_db(versioned.url, tmp_path / "db")
    rules = [
        {
            "name": "rerun",
            "action": "set_state",
            "state": {"type": "SCHEDULED", "name": "Scheduled"},
            "sql": tagged("bulk-rerun", "FAILED"),
        },
        {
            "name": "cancelling",
            "action": "set_state",
            "state": {"type": "CANCELLING", "name": "Cancelling"},
            "sql": tagged("bulk-cancelling", "SCHEDULED"),
        },
        purge("bulk-purge", "COMPLETED"),
    ]
    policy = policy_file(tmp_path, rules)
    ids = orphans + deployed + scheduled + completed
    others = outside(server, ids)
    result = run_cli(
        "apply", str(policy), "--db", str(db), "--api-url", versioned.url, "--yes", "--json"
    )
    assert result.exit_code == 9, result.output  # aborted and replaced runs: not all done
    path = json.loads(result.stdout)["result"]["path"]
    if version_tuple(versioned.version) < BULK_SINCE:  # one call per run, read the same way
        assert path.startswith("per-run"), path
    else:
        assert path == "bulk"
    assert outcomes(db, ids) == {
        **dict.fromkeys(orphans, "aborted"),
        **dict.fromkeys(deployed, "accepted"),
        **dict.fromkeys(scheduled, "replaced"),
        **dict.fromkeys(completed, "deleted"),
    }
    live = server_runs(versioned.url)
    assert {i: live.get(i) for i in ids} == {
        **dict.fromkeys(orphans, "FAILED"),
        **dict.fromkeys(deployed, "SCHEDULED"),
        **dict.fromkeys(scheduled, "CANCELLED"),
        **dict.fromkeys(completed, None),
    }
    assert outside(server, ids) == others
