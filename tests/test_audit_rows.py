"""The audit's row of a run about to be sent is the run as the re-read right before showed it.

apply hands ``audit.record_runs`` the re-read's answer (``held``) instead of having
DuckDB read the runs' whole rows back by id: in a million-run file that read touches
every column of 50 scattered vectors (BENCHMARKS.md, "Issue #24"). The JSON must be
what the file's row says (the same keys in the same order, the same values), apart
from the file's bookkeeping of when it read the run. No server: the objects are
built here, the file is real.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from flowsync.api import Page
from flowsync.store import Store, audit, synced_tables
from flowsync.store.tables import FLOW_RUNS
from harness.history import changed_run

BOOKKEEPING = ("synced_at", "seen_pull")
# A run as the API returns it: nested objects (parameters, state details), tags, times.
RUN = {
    **changed_run(7),
    "empirical_policy": {"retries": 0, "retry_delay": None, "pause_keys": []},
    "job_variables": {"image": "python:3.12", "cpu": 0.5},
    "state_message": "All states completed.",
}


def _call(batch: int = 1) -> audit.Call:
    return audit.Call(
        apply_id="a1",
        api_url="http://127.0.0.1/api",
        policy_path="p.yaml",
        policy_sha256="0" * 64,
        batch=batch,
        rule="r",
        action="delete",
        requested_state=None,
    )


def _audit_rows(store: Store) -> dict[str, str | None]:
    rows = store.execute(
        "SELECT CAST(flow_run_id AS VARCHAR), CAST(run_row AS VARCHAR) FROM policy_actions"
    ).rows()
    return {i: row for i, row in rows}


def _file_row(store: Store, run_id: str) -> str:
    row = store.execute(
        "SELECT CAST(to_json(r) AS VARCHAR) FROM flow_runs r WHERE id = CAST(? AS UUID)", [run_id]
    ).scalar()
    assert row is not None
    return str(row)


def _without_bookkeeping(text: str) -> list[tuple[str, Any]]:
    # a list of pairs: the keys' order counts too
    return [(k, v) for k, v in json.loads(text).items() if k not in BOOKKEEPING]


def _unknown_field() -> dict[str, Any]:
    run = copy.deepcopy(RUN)
    run["brand_new_field"] = {"nested": [1, 2]}  # kept in `extra`
    return run


def _too_big_for_arrow() -> dict[str, Any]:
    run = copy.deepcopy(RUN)
    run["flow_version"], run["tags"] = 3, ["a", 7]  # not text: DuckDB reads the JSON text
    return run


@pytest.mark.parametrize(
    "run", [RUN, _unknown_field(), _too_big_for_arrow()], ids=["arrow", "extra", "json-text"]
)
def test_a_pending_row_from_the_reread_is_the_files_row(
    tmp_path: Path, run: dict[str, Any]
) -> None:
    with Store.writer(tmp_path / "x.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(store, FLOW_RUNS, [Page.from_rows([run])], pull_id=1)
        audit.record_runs(
            store, _call(), [(run["id"], "COMPLETED", "pending", None)], {run["id"]: run}
        )
        held = _audit_rows(store)[run["id"]]
        assert held is not None
        assert _without_bookkeeping(held) == _without_bookkeeping(_file_row(store, run["id"]))
        assert json.loads(held)["deleted_at"] is None


def test_runs_not_held_get_their_row_in_the_file_and_unknown_runs_none(tmp_path: Path) -> None:
    in_file = copy.deepcopy(RUN)
    server_only = {**copy.deepcopy(RUN), "id": "00000000-0000-4000-8000-0000000000aa"}
    nowhere = "00000000-0000-4000-8000-0000000000bb"
    with Store.writer(tmp_path / "x.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(store, FLOW_RUNS, [Page.from_rows([in_file])], pull_id=1)
        runs = [
            (i, "COMPLETED", "pending", None) for i in (in_file["id"], server_only["id"], nowhere)
        ]
        audit.record_runs(store, _call(), runs, {server_only["id"]: server_only})
        rows = _audit_rows(store)
        assert rows[in_file["id"]] == _file_row(store, in_file["id"])  # bookkeeping included
        server_row = rows[server_only["id"]]
        assert server_row is not None
        assert json.loads(server_row)["id"] == server_only["id"]
        assert json.loads(server_row)["state_type"] == "COMPLETED"
        assert rows[nowhere] is None
        # the held runs' table is gone with the statement
        assert "_audit_held" not in {
            r[0] for r in store.execute("SELECT table_name FROM duckdb_tables()").rows()
        }


def test_a_run_sent_again_has_one_row_with_what_the_last_call_sent(tmp_path: Path) -> None:
    """A lost answer, the run unchanged after the settle bound, sent again: its one pending row
    holds the second call's guard, row and time, which a next apply settles a kill -9 by."""
    from flowsync.policy.ledger import Ledger
    from flowsync.policy.model import DeleteRule
    from flowsync.policy.result import ApplyResult

    first = {**copy.deepcopy(RUN), "state_type": "SCHEDULED", "state_id": str(uuid.UUID(int=1))}
    second = {**copy.deepcopy(RUN), "state_type": "PENDING", "state_id": str(uuid.UUID(int=2))}
    run = RUN["id"]
    with Store.writer(tmp_path / "x.duckdb") as store:
        ledger = Ledger(
            store, ApplyResult.new("0" * 64), api_url="u", policy_path="p", policy_sha256="0" * 64
        )
        rule = DeleteRule(name="r", action="delete", sql="SELECT id FROM flow_runs")
        ledger.pending(ledger.call(1, rule), {run: "SCHEDULED"}, {run: first})
        (sent_first,) = audit.unresolved(store)
        ledger.pending(ledger.call(1, rule), {run: "PENDING"}, {run: second})
        (sent_again,) = audit.unresolved(store)
        assert sent_again.state_type_before == "PENDING"
        assert sent_again.state_id_before == str(uuid.UUID(int=2))
        assert sent_again.sent_at > sent_first.sent_at
        assert store.execute("SELECT count(*) FROM policy_actions").scalar() == 1
        assert ledger.open_rows() == [run]
