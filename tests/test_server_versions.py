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
refused there first, in one line, and ``plan`` says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.seed import Seeded, delete_runs, seed, set_states
from harness.server import Server, server_versions, version_tuple
from tests.helpers import pulled_db, query, run_cli, wait_for_state_events
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
