"""Applying policies: the bulk-call safety invariants (captured requests), partial
failures (MockTransport), and the real thing against a real Prefect server."""

from __future__ import annotations

import _thread
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync.api import PrefectClient, RetryPolicy
from flowsync.api.budget import RequestBudget
from flowsync.config import ApiSettings
from flowsync.errors import ApiError, AuthError, PolicyLimitError
from flowsync.policy import ApplyResult, apply_plan, make_plan, parse_policy
from flowsync.policy.answers import Seen, classify_lost, classify_unanswered, set_instead
from flowsync.policy.apply import batches
from flowsync.policy.plan import Plan
from flowsync.policy.result import Outcome, RunResult
from flowsync.progress import NullProgress
from flowsync.store import Store
from harness.seed import seed
from harness.server import Server
from tests.helpers import query, run_cli, scalar
from tests.policy_db import DEPLOYMENTS, FLOW, make_db, rid, run

pytestmark = pytest.mark.backends("sqlite", "postgres")

Handler = Callable[[httpx.Request], httpx.Response]


def plan_for(db: Path, text: str) -> Plan:
    with Store.sandboxed(db, live=True) as store:
        return make_plan(store, parse_policy(text.encode(), "p.yaml"))


def mock_client(handler: Handler) -> PrefectClient:
    settings = ApiSettings(url="http://prefect.test/api")
    return PrefectClient(
        settings,
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(attempts=2),
        sleep=lambda s: None,
    )


def api_rows(db: Path) -> dict[str, dict[str, Any]]:
    """The live runs of a flowsync file as the API returns them: what a fake server holds."""
    rows = query(
        db,
        """
        SELECT CAST(id AS VARCHAR), name, CAST(flow_id AS VARCHAR), CAST(deployment_id AS VARCHAR), state_type,
               state_name, tags, expected_start_time, start_time, end_time, created
        FROM flow_runs WHERE deleted_at IS NULL""",
    )
    out = {}
    for i, name, flow, dep, st, sn, tags, exp, start, end, created in rows:
        state_id = str(uuid.uuid5(uuid.NAMESPACE_URL, i))
        out[i] = {
            "id": i,
            "name": name,
            "flow_id": flow,
            "deployment_id": dep,
            "state_type": st,
            "state_name": sn,
            "state_id": state_id,
            "state": {"id": state_id, "type": st, "name": sn},
            "tags": list(tags),
            "expected_start_time": exp.isoformat(),
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
            "created": created.isoformat(),
            "updated": created.isoformat(),
        }
    return out


class Recorder:
    """A fake server: records every body, answers reads by id from ``runs`` (the runs it
    holds, as they were pulled), and bulk calls with ``answer(path, body)``."""

    def __init__(
        self,
        answer: Callable[[str, dict[str, Any]], httpx.Response],
        runs: dict[str, dict[str, Any]],
    ) -> None:
        self.answer = answer
        self.runs = runs
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/")
        body = json.loads(request.content) if request.content else {}
        self.bodies.append((path, body))
        if path == "health":
            return httpx.Response(200, json=True)
        if path == "admin/version":
            return httpx.Response(200, json="3.8.8")
        if path == "flow_runs/filter" and set(body.get("flow_runs", {})) == {"id"}:
            return httpx.Response(
                200, json=[self.runs[i] for i in body["flow_runs"]["id"]["any_"] if i in self.runs]
            )
        if path == "flows/filter":  # the file's server (identity.bind): it knows the file's flows
            return httpx.Response(200, json=[{"id": i} for i in body["flows"]["id"]["any_"]])
        return self.answer(path, body)

    @property
    def bulk(self) -> list[tuple[str, dict[str, Any]]]:
        return [(p, b) for p, b in self.bodies if p.startswith("flow_runs/bulk")]


def accept_all(path: str, body: dict[str, Any]) -> httpx.Response:
    ids = body["flow_runs"]["id"]["any_"]
    if path == "flow_runs/bulk_delete":
        return httpx.Response(200, json={"deleted": ids})
    return httpx.Response(
        200,
        json={
            "results": [
                {
                    "flow_run_id": i,
                    "status": "ACCEPT",
                    "state": {"type": body["state"]["type"]},
                    "details": {},
                }
                for i in ids
            ]
        },
    )


MIXED = [run(i, state="COMPLETED") for i in range(1, 71)] + [
    run(i, state="FAILED") for i in range(71, 131)
]
MIXED += [run(200, state="COMPLETED", tags=["keep"])]
DELETE_ALL = """version: 1
protect_tags: [keep]
rules:
  - name: purge
    action: delete
    sql: SELECT id FROM flow_runs WHERE state_type IN ('COMPLETED', 'FAILED')
"""
CANCEL_ALL = """version: 1
rules:
  - name: cancel
    action: set_state
    state: {type: CANCELLED, name: Cancelled}
    sql: SELECT id FROM flow_runs
"""


@pytest.fixture
def mixed_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "runs.duckdb", MIXED)


def test_every_bulk_call_names_its_runs_and_guards_their_state(mixed_db: Path) -> None:
    fake = Recorder(accept_all, api_rows(mixed_db))
    plan = plan_for(mixed_db, DELETE_ALL)
    with Store.sandboxed_writer(mixed_db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan)
    assert result.status == "success" and result.counts == {"purge": {"deleted": 130}}
    bulk = fake.bulk
    # one read by id right before each call, of exactly that batch's runs
    reads = [b["flow_runs"]["id"]["any_"] for p, b in fake.bodies if p == "flow_runs/filter"]
    assert [b["flow_runs"]["id"]["any_"] for _, b in bulk] == reads
    paths = [p for p, _ in fake.bodies]
    assert paths[:2] == ["health", "admin/version"]
    assert sorted(paths[2:]) == ["flow_runs/bulk_delete"] * 4 + ["flow_runs/filter"] * 4
    # each call after its batch's read; the next batch's read may go out while a call is in
    # flight (policy/ahead.py), never the one after it
    read_at = [i for i, p in enumerate(paths) if p == "flow_runs/filter"]
    call_at = [i for i, p in enumerate(paths) if p == "flow_runs/bulk_delete"]
    assert all(r < c for r, c in zip(read_at, call_at))
    assert all(c < r for c, r in zip(call_at, read_at[2:]))
    assert len(bulk) == 2 + 2  # 70 COMPLETED -> 50 + 20, 60 FAILED -> 50 + 10
    sent: list[str] = []
    state_of = {r["id"]: r["state"] for r in MIXED}
    for path, body in bulk:
        assert path == "flow_runs/bulk_delete"
        ids = body["flow_runs"]["id"]["any_"]
        assert isinstance(ids, list) and 0 < len(ids) <= 50
        assert body["limit"] == len(ids)
        guard = body["flow_runs"]["state"]
        assert len(guard["type"]["any_"]) == 1 and {state_of[i] for i in ids} == set(
            guard["type"]["any_"]
        )
        assert guard["name"]["any_"] == [
            state_of[ids[0]].title()
        ]  # the name too: Late is SCHEDULED
        sent += ids
    assert sorted(sent) == sorted(r["id"] for r in MIXED if "keep" not in r["tags"])
    assert rid(200) not in sent  # protected
    rows = query(
        mixed_db,
        "SELECT outcome, count(*), count(DISTINCT batch), count(run_row) FROM policy_actions GROUP BY 1",
    )
    assert rows == [("deleted", 130, 4, 130)]


def test_set_state_sends_the_state_and_force(mixed_db: Path) -> None:
    fake = Recorder(accept_all, api_rows(mixed_db))
    plan = plan_for(mixed_db, CANCEL_ALL.replace("sql:", "force: true\n    sql:"))
    with Store.sandboxed_writer(mixed_db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan)
    assert result.counts == {"cancel": {"accepted": 131}}
    for _, body in fake.bulk:
        assert body["state"] == {"type": "CANCELLED", "name": "Cancelled"} and body["force"] is True
        assert (
            0 < len(body["flow_runs"]["id"]["any_"]) <= 50
            and body["flow_runs"]["state"]["type"]["any_"]
        )


def test_per_run_failures_inside_http_200_are_read(mixed_db: Path) -> None:
    def locked(path: str, body: dict[str, Any]) -> httpx.Response:
        ids = body["flow_runs"]["id"]["any_"]
        results = []
        for n, i in enumerate(ids):
            if n % 10 == 0:
                results.append(
                    {
                        "flow_run_id": i,
                        "status": "ABORT",
                        "state": None,
                        "details": {
                            "type": "abort_details",
                            "reason": "(sqlite3.OperationalError) database is locked",
                        },
                    }
                )
            elif n % 10 == 1:
                results.append(
                    {
                        "flow_run_id": i,
                        "status": "REJECT",
                        "state": {"type": "COMPLETED"},
                        "details": {"type": "reject_details", "reason": "terminal"},
                    }
                )
            else:
                results.append(
                    {
                        "flow_run_id": i,
                        "status": "ACCEPT",
                        "state": {"type": "CANCELLED"},
                        "details": {},
                    }
                )
        return httpx.Response(200, json={"results": results})

    plan = plan_for(mixed_db, CANCEL_ALL)
    fake = Recorder(locked, api_rows(mixed_db))
    with Store.sandboxed_writer(mixed_db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan)
    counts = result.counts["cancel"]
    assert counts["aborted"] > 0 and counts["rejected"] > 0 and counts["accepted"] > 0
    assert sum(counts.values()) == 131
    assert result.status == "partial"
    details = scalar(
        mixed_db, "SELECT any_value(details) FROM policy_actions WHERE outcome = 'aborted'"
    )
    assert "database is locked" in details


@pytest.mark.parametrize(
    ("policy", "body"),
    [
        (DELETE_ALL, {"status": "ok"}),  # a gateway's rewrite: no `deleted` list
        (DELETE_ALL, ["done"]),  # not an object
        (DELETE_ALL, {"deleted": "all"}),
        (CANCEL_ALL, {"results": "ok"}),
        (CANCEL_ALL, {"results": ["accepted"]}),  # items that are not objects
    ],
    ids=["delete-no-list", "delete-not-an-object", "delete-not-a-list", "set-no-list", "set-items"],
)
def test_a_call_carried_out_but_answered_in_another_shape_is_read_back_not_called_refused(
    mixed_db: Path, policy: str, body: Any
) -> None:
    """The server carries each bulk call out, then its HTTP 200 carries a body of another
    shape than Prefect's. That is no refusal (nothing done): the server finished with the
    call, what it did is unknown. Its runs are read back and audited as the server has them
    (deleted, or accepted), never `failed`; the file marks the deleted runs deleted."""
    rows = api_rows(mixed_db)

    def carried_out(path: str, ids_body: dict[str, Any]) -> httpx.Response:
        for i in ids_body["flow_runs"]["id"]["any_"]:
            if path.endswith("bulk_delete"):
                rows.pop(i, None)
            else:
                _moved(rows[i], "CANCELLED")
        return httpx.Response(200, json=body)

    fake = Recorder(carried_out, rows)
    plan = plan_for(mixed_db, policy)
    with Store.sandboxed_writer(mixed_db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=0)
    sent = sum(len(b["flow_runs"]["id"]["any_"]) for _, b in fake.bulk)
    if policy is DELETE_ALL:
        assert result.counts == {"purge": {"deleted": 130}} and sent == 130
        assert (
            scalar(mixed_db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL") == 130
        )
    else:
        assert result.counts == {"cancel": {"accepted": 131}} and sent == 131
    assert not scalar(mixed_db, "SELECT count(*) FROM policy_actions WHERE outcome = 'failed'")


def test_a_failing_batch_does_not_stop_the_next(mixed_db: Path) -> None:
    plan = plan_for(mixed_db, DELETE_ALL)
    second = set(list(batches(plan))[1].ids)

    def second_fails(path: str, body: dict[str, Any]) -> httpx.Response:
        # batch 2: the call and both resends (it changed nothing each time)
        if set(body["flow_runs"]["id"]["any_"]) == second:
            return httpx.Response(503, text="overloaded")
        return accept_all(path, body)

    fake = Recorder(second_fails, api_rows(mixed_db))
    with Store.sandboxed_writer(mixed_db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan, attempts=3, settle_seconds=0)
    assert result.status == "partial" and result.batches == 4
    assert result.counts["purge"] == {"deleted": 130 - 20, "failed": 20}
    assert len(result.errors) == 1 and "batch 2" in result.errors[0]
    # a 503 on a bulk call is never retried blindly: the runs are read until the server settles
    # (here: at once), and each resend follows a fresh re-read and decision
    paths = [
        p
        for p, b in fake.bodies
        if p.startswith("flow_runs/") and set(b["flow_runs"]["id"]["any_"]) == second
    ]
    assert paths == ["flow_runs/filter", "flow_runs/bulk_delete", "flow_runs/filter"] * 3
    assert (
        scalar(
            mixed_db, "SELECT count(*) FROM policy_actions WHERE outcome = 'failed' AND batch = 2"
        )
        == 20
    )


def test_missing_from_deleted_is_not_counted_deleted(mixed_db: Path) -> None:
    def half(path: str, body: dict[str, Any]) -> httpx.Response:
        ids = body["flow_runs"]["id"]["any_"]
        return httpx.Response(200, json={"deleted": ids[: len(ids) // 2]})

    plan = plan_for(mixed_db, DELETE_ALL)
    fake = Recorder(half, api_rows(mixed_db))
    with Store.sandboxed_writer(mixed_db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan)
    # the others were re-read after the call: still there, unchanged -> failed (not sent again)
    assert result.counts["purge"] == {"deleted": 25 + 10 + 25 + 5, "failed": 25 + 10 + 25 + 5}
    assert result.status == "partial"


def test_apply_against_an_unreachable_server_fails_fast(mixed_db: Path) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    pauses: list[float] = []
    plan = plan_for(mixed_db, DELETE_ALL)
    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(refused),
        sleep=pauses.append,
    )
    with Store.sandboxed_writer(mixed_db) as store, client, pytest.raises(ApiError):
        apply_plan(client, store, plan)
    assert len(pauses) == 1  # the health check's two quick tries, not seven with backoff
    assert scalar(mixed_db, "SELECT count(*) FROM policy_actions") == 0


def test_rule_sql_that_could_write_is_refused_by_apply_and_plan_refresh(
    mixed_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Recorder(accept_all, api_rows(mixed_db))
    monkeypatch.setattr("flowsync.api.PrefectClient", lambda settings, **kw: mock_client(fake))
    bad = (
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
        "'SELECT setval(''policy_actions_id'', 1) AS id'))"
    )
    path = mixed_db.parent / "bad.yaml"
    path.write_text(
        'version: 1\nrules:\n  - name: sneaky\n    action: delete\n    sql: "' + bad + '"\n'
    )
    for args in (["apply", "--yes"], ["plan", "--refresh"]):
        result = run_cli(
            args[0],
            str(path),
            args[1],
            "--db",
            str(mixed_db),
            "--api-url",
            "http://prefect.test/api",
        )
        assert result.exit_code == 7, result.output
        assert "sql calls json_execute_serialized_sql" in result.stderr
    assert fake.bodies == []
    # The audit's sequence is untouched: a harmless apply still records its rows.
    good = mixed_db.parent / "good.yaml"
    good.write_text(DELETE_ALL)
    result = run_cli(
        "apply", str(good), "--db", str(mixed_db), "--yes", "--api-url", "http://prefect.test/api"
    )
    assert result.exit_code == 0, result.output
    assert scalar(mixed_db, "SELECT count(DISTINCT id) FROM policy_actions") == 130


def test_max_actions_refuses_before_any_request(mixed_db: Path) -> None:
    fake = Recorder(accept_all, api_rows(mixed_db))
    plan = plan_for(mixed_db, DELETE_ALL.replace("version: 1\n", "version: 1\nmax_actions: 100\n"))
    with (
        Store.sandboxed_writer(mixed_db) as store,
        mock_client(fake) as client,
        pytest.raises(PolicyLimitError),
    ):
        apply_plan(client, store, plan)
    assert fake.bodies == []
    assert scalar(mixed_db, "SELECT count(*) FROM policy_actions") == 0


def test_cli_refuses_over_max_actions_with_exit_8(mixed_db: Path) -> None:
    path = mixed_db.parent / "p.yaml"
    path.write_text(DELETE_ALL.replace("version: 1\n", "version: 1\nmax_actions: 100\n"))
    # An unroutable URL: any request would fail loudly with exit 3, not 8.
    result = run_cli(
        "apply", str(path), "--db", str(mixed_db), "--yes", "--api-url", "http://127.0.0.1:9/api"
    )
    assert result.exit_code == 8, result.output
    assert "max_actions" in result.stderr


# -- against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    backend: str,
    start_backend_server: Any,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    cluster = request.getfixturevalue("pg_cluster") if backend.startswith("postgres") else None
    with start_backend_server(backend, tmp_path_factory.mktemp("apply-prefect"), cluster) as s:
        seed(s.url, runs=160, flows=2, deployments_per_flow=1, days=60, seed_value=3)
        yield s


def count(server: Server, body: dict[str, Any] | None = None) -> int:
    return int(httpx.post(f"{server.url}/flow_runs/count", json=body or {}, timeout=60).json())


def ids_in(server: Server, state: str) -> list[str]:
    runs = httpx.post(
        f"{server.url}/flow_runs/filter",
        timeout=60,
        json={"flow_runs": {"state": {"type": {"any_": [state]}}}, "limit": 200},
    ).json()
    return [r["id"] for r in runs]


def write(folder: Path, text: str) -> Path:
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


def purge_state(folder: Path, state: str) -> Path:
    """A policy of one rule, ``purge-<state>``: delete the live runs in ``state``."""
    return write(
        folder,
        f"""version: 1
rules:
  - name: purge-{state.lower()}
    action: delete
    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = '{state}'
""",
    )


def pulled(server: Server, db: Path) -> Path:
    result = run_cli("pull", "--api-url", server.url, "--db", str(db), "--quiet")
    assert result.exit_code == 0, result.output
    return db


def test_no_tty_and_no_yes_refuses_without_any_call(server: Server, tmp_path: Path) -> None:
    db = pulled(server, tmp_path / "runs.duckdb")
    before = count(server)
    path = write(
        tmp_path,
        DELETE_ALL.replace("state_type IN ('COMPLETED', 'FAILED')", "state_type = 'CRASHED'"),
    )
    result = run_cli("apply", str(path), "--db", str(db), "--api-url", server.url)
    assert result.exit_code == 2
    assert "stdin is not a terminal" in result.stderr and "--yes" in result.stderr
    assert count(server) == before
    assert scalar(db, "SELECT count(*) FROM policy_actions") == 0


def test_apply_against_the_real_server(server: Server, tmp_path: Path) -> None:
    db = pulled(server, tmp_path / "runs.duckdb")
    crashed = count(server, {"flow_runs": {"state": {"type": {"any_": ["CRASHED"]}}}})
    paused = ids_in(server, "PAUSED")
    assert crashed and paused
    text = """version: 1
rules:
  - name: purge-crashed
    action: delete
    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = 'CRASHED'
  - name: cancel-paused
    action: set_state
    state: {type: CANCELLED, name: Cancelled, message: "flowsync test"}
    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = 'PAUSED'
"""
    path = write(tmp_path, text)
    result = run_cli(
        "apply", str(path), "--db", str(db), "--api-url", server.url, "--yes", "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["result"]
    assert summary["status"] == "success"
    assert summary["rules"] == {
        "purge-crashed": {"deleted": crashed},
        "cancel-paused": {"accepted": len(paused)},
    }
    # the server changed ...
    assert count(server, {"flow_runs": {"state": {"type": {"any_": ["CRASHED", "PAUSED"]}}}}) == 0
    # ... and the file knows, keeping the deleted runs in its history
    assert (
        scalar(
            db,
            "SELECT count(*) FROM flow_runs WHERE state_type = 'CRASHED' AND deleted_at IS NOT NULL",
        )
        == crashed
    )
    assert scalar(
        db,
        "SELECT count(*) FROM flow_runs WHERE id IN (SELECT unnest(CAST(? AS UUID[]))) AND state_type = 'CANCELLED'",
        [paused],
    ) == len(paused)
    rows = query(db, "SELECT DISTINCT policy_sha256, policy_path, api_url FROM policy_actions")
    import hashlib

    assert rows == [(hashlib.sha256(path.read_bytes()).hexdigest(), str(path), server.url)]
    assert scalar(
        db, "SELECT count(*) FROM policy_actions WHERE run_row->>'$.state_type' = state_type_before"
    ) == crashed + len(paused)
    # a second plan has nothing left to do, and a re-run is a no-op
    again = run_cli("plan", str(path), "--db", str(db), "--json")
    assert json.loads(again.stdout)["total"] == 0
    rerun = run_cli("apply", str(path), "--db", str(db), "--api-url", server.url, "--yes")
    assert rerun.exit_code == 0 and "nothing to do" in rerun.stderr


def test_runs_changed_on_the_server_since_the_pull_are_left_alone(
    server: Server, tmp_path: Path
) -> None:
    db = pulled(server, tmp_path / "runs.duckdb")
    failed = ids_in(server, "FAILED")
    assert len(failed) >= 4
    changed = failed[:3]
    # someone retries three of them after our pull
    r = httpx.post(
        f"{server.url}/flow_runs/bulk_set_state",
        timeout=60,
        json={
            "flow_runs": {"id": {"any_": changed}},
            "state": {"type": "SCHEDULED", "name": "AwaitingRetry"},
            "force": True,
            "limit": 3,
        },
    )
    assert [x["status"] for x in r.json()["results"]] == ["ACCEPT"] * 3
    path = purge_state(tmp_path, "FAILED")
    result = run_cli(
        "apply", str(path), "--db", str(db), "--api-url", server.url, "--yes", "--json"
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)["result"]["rules"]["purge-failed"]
    assert counts == {"deleted": len(failed) - 3, "skipped": 3}
    assert count(server, {"flow_runs": {"id": {"any_": changed}}}) == 3  # still there
    skipped = query(
        db,
        "SELECT CAST(flow_run_id AS VARCHAR), details->>'$.state_type_now' FROM policy_actions WHERE outcome = 'skipped'",
    )
    assert sorted(skipped) == sorted((i, "SCHEDULED") for i in changed)
    # the refresh brought their new state into the file
    assert (
        scalar(
            db,
            "SELECT count(*) FROM flow_runs WHERE id IN (SELECT unnest(CAST(? AS UUID[]))) AND state_type = 'SCHEDULED' AND deleted_at IS NULL",
            [changed],
        )
        == 3
    )


def apply_cli_against(
    fake: Recorder, db: Path, policy: str, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> Any:
    """``flowsync apply POLICY --yes`` with ``fake`` as the server (the command imports the
    client when it runs: it is patched where it is looked up)."""
    monkeypatch.setattr("flowsync.api.PrefectClient", lambda settings, **kw: mock_client(fake))
    path = db.parent / "p.yaml"
    path.write_text(policy)
    return run_cli(
        "apply", str(path), "--db", str(db), "--yes", "--api-url", "http://prefect.test/api", *extra
    )


def test_cli_partial_failure_exits_9_with_a_summary(
    mixed_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def some_aborted(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "health":
            return httpx.Response(200, json=True)
        if path == "admin/version":
            return httpx.Response(200, json="3.8.8")
        ids = body["flow_runs"]["id"]["any_"]
        return httpx.Response(
            200,
            json={
                "results": [
                    {
                        "flow_run_id": i,
                        "status": "ABORT" if n == 0 else "ACCEPT",
                        "details": {"reason": "database is locked"},
                    }
                    for n, i in enumerate(ids)
                ]
            },
        )

    class RefreshFails(Recorder):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if len(self.bulk) == 4 and request.url.path.endswith(
                "/flow_runs/filter"
            ):  # the refresh after apply
                return httpx.Response(503, text="unavailable")
            return super().__call__(request)

    fake = RefreshFails(some_aborted, api_rows(mixed_db))
    result = apply_cli_against(fake, mixed_db, CANCEL_ALL, monkeypatch)
    assert result.exit_code == 9, result.output
    assert "cancel: 4 aborted, 127 accepted" in result.stderr
    assert "re-reading the 9 runs set in batch 4 failed" in result.stderr
    assert "partial: 127 done, 4 failed in 4 batches" in result.stderr


class CtrlCAtRead:
    """Ctrl-C (SIGINT, to the apply's thread) at the re-read of ``ids`` (a batch's), once the
    call ``out`` answers is on its own thread; that call stays out until ``after`` seconds
    past the Ctrl-C (the apply does not wait for it), however slow the machine is before it
    (a fixed few seconds from the call ended before a loaded machine reached the re-read)."""

    def __init__(self, ids: set[str], after: float) -> None:
        self.ids, self.after = ids, after
        self.in_flight, self.interrupted = threading.Event(), threading.Event()

    def out(self, path: str) -> httpx.Response:
        self.in_flight.set()
        self.interrupted.wait(60)
        time.sleep(self.after)
        raise httpx.ReadTimeout("no answer", request=httpx.Request("POST", path))

    def at_read(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        if set(body.get("flow_runs", {}).get("id", {}).get("any_") or ()) == self.ids:
            assert self.in_flight.wait(60)
            self.interrupted.set()
            _thread.interrupt_main()
            time.sleep(1)


def test_an_interrupted_apply_leaves_pending_rows_and_sends_nothing_more(mixed_db: Path) -> None:
    """Ctrl-C (SIGINT, to the apply's thread) while batch 2's call is in flight and batch 3 is
    being re-read meanwhile: batch 2 stays pending, batch 3 is never sent."""
    plan = plan_for(mixed_db, DELETE_ALL)
    ctrl_c = CtrlCAtRead(set(list(batches(plan))[2].ids), after=5)

    def ctrl_c_in_flight(path: str, body: dict[str, Any]) -> httpx.Response:
        if len(fake.bulk) == 2:  # batch 2's call, on its own thread: still out at the Ctrl-C
            return ctrl_c.out(path)
        return accept_all(path, body)

    def reads(request: httpx.Request) -> httpx.Response:
        ctrl_c.at_read(request)  # batch 3's re-read, on the apply's thread
        return fake(request)

    fake = Recorder(ctrl_c_in_flight, api_rows(mixed_db))
    with (
        Store.sandboxed_writer(mixed_db) as store,
        mock_client(reads) as client,
        pytest.raises(KeyboardInterrupt),
    ):
        apply_plan(client, store, plan, progress=NullProgress())
    # batch 2 was in flight (recorded pending before it was sent); nothing after it
    assert len(fake.bulk) == 2
    assert query(
        mixed_db, "SELECT batch, outcome, count(*) FROM policy_actions GROUP BY ALL ORDER BY 1"
    ) == [(1, "deleted", 50), (2, "pending", 20)]
    assert (
        scalar(mixed_db, "SELECT status FROM sync_runs ORDER BY id DESC LIMIT 1") == "interrupted"
    )


def test_an_interrupted_apply_says_what_it_did_and_what_stopped_it(
    mixed_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command, Ctrl-C as above: its --json result counts batch 1's deletions and names
    what stopped it (it said 0 done and "see the error below", with no error in JSON)."""
    plan = plan_for(mixed_db, DELETE_ALL)
    ctrl_c = CtrlCAtRead(set(list(batches(plan))[2].ids), after=3)

    def answer(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "health":
            return httpx.Response(200, json=True)
        if path == "admin/version":
            return httpx.Response(200, json="3.8.8")
        if len(fake.bulk) == 2:
            return ctrl_c.out(path)
        return accept_all(path, body)

    class CtrlC(Recorder):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            ctrl_c.at_read(request)
            return super().__call__(request)

    fake = CtrlC(answer, api_rows(mixed_db))
    result = apply_cli_against(fake, mixed_db, DELETE_ALL, monkeypatch, "--json")
    assert result.exit_code == 130, result.output
    done = json.loads(result.stdout)["result"]
    assert done["rules"] == {"purge": {"deleted": 50}}
    assert done["done"] == 50
    assert done["errors"][-1].startswith("the apply stopped early: stopped by SIGINT (Ctrl-C)")
    # its reads' record says so too (it said `failed`, "KeyboardInterrupt: ")
    assert query(
        mixed_db, "SELECT mode, status, error FROM sync_runs ORDER BY id DESC LIMIT 1"
    ) == [("apply", "interrupted", "stopped by SIGINT (Ctrl-C); what was committed is kept")]


def test_an_apply_that_cannot_reach_the_server_closes_its_record(mixed_db: Path) -> None:
    """A 401 on the first request (the health check, as a proxy asking for credentials
    answers it), or on a later one before any write: the apply's record is `failed` with
    the error, or there is none (the health check comes before anything is written); never
    left `running` (status showed a running apply until the next pull)."""
    for refused in ("health", "flow_runs/filter"):

        def refuse(request: httpx.Request, refused: str = refused) -> httpx.Response:
            path = request.url.path
            if path.endswith(refused):
                return httpx.Response(401, json={"detail": "expired"})
            said = {"health": True, "version": "3.8.8"}
            return httpx.Response(
                200, json=next((v for k, v in said.items() if path.endswith(k)), [])
            )

        before = query(mixed_db, "SELECT count(*) FROM sync_runs")
        plan = plan_for(mixed_db, DELETE_ALL)
        with (
            Store.sandboxed_writer(mixed_db) as store,
            mock_client(refuse) as client,
            pytest.raises(AuthError),
        ):
            apply_plan(client, store, plan, progress=NullProgress())
        if refused == "health":
            assert query(mixed_db, "SELECT count(*) FROM sync_runs") == before
            continue
        rows = query(mixed_db, "SELECT mode, status, error FROM sync_runs ORDER BY id DESC LIMIT 1")
        assert rows[0][:2] == ("apply", "failed") and "401" in rows[0][2], rows


def test_a_401_on_the_call_out_when_the_next_batch_cannot_be_read_is_the_error(
    mixed_db: Path,
) -> None:
    """Batch 1's call is refused 401 while batch 2 is re-read, and that re-read fails (503):
    both batches are recorded (batch 1 failed with the 401, batch 2 not checked), nothing
    else is sent, and the apply ends on the 401, not on the re-read."""
    plan = plan_for(mixed_db, DELETE_ALL)
    first, second = (set(b.ids) for b in list(batches(plan))[:2])
    out = threading.Event()

    def refused(path: str, body: dict[str, Any]) -> httpx.Response:
        out.set()
        return httpx.Response(401, json={"detail": "expired"})

    def reads(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        if set(body.get("flow_runs", {}).get("id", {}).get("any_") or ()) == second:
            assert out.wait(5)  # batch 1's call is out (and refused) first
            return httpx.Response(503, text="unavailable")
        return fake(request)

    fake = Recorder(refused, api_rows(mixed_db))
    with (
        Store.sandboxed_writer(mixed_db) as store,
        mock_client(reads) as client,
        pytest.raises(AuthError, match="401"),
    ):
        apply_plan(client, store, plan, progress=NullProgress())
    assert [set(b["flow_runs"]["id"]["any_"]) for _, b in fake.bulk] == [first]
    assert query(
        mixed_db, "SELECT batch, outcome, count(*) FROM policy_actions GROUP BY ALL ORDER BY 1"
    ) == [(1, "failed", len(first)), (2, "failed", len(second))]


def _apply_on_a_terminal(args: list[str], answer: str, timeout: float = 120) -> tuple[int, str]:
    """Run `flowsync apply ARGS` with stdin/stdout/stderr on a real pseudo-terminal; type
    ``answer`` at the prompt (``^C``: interrupt it there)."""
    import os
    import pty
    import select
    import signal
    import subprocess
    import sys
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowsync", "apply", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )
    os.close(follower)
    seen, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                if answer == "^C":  # Ctrl-C at the question (the terminal's SIGINT)
                    proc.send_signal(signal.SIGINT)
                else:
                    os.write(leader, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert answered, f"no confirmation prompt on the terminal:\n{seen.decode(errors='replace')}"
    return code, seen.decode(errors="replace")


def test_a_terminal_asks_first_and_no_changes_nothing(server: Server, tmp_path: Path) -> None:
    db = pulled(server, tmp_path / "runs.duckdb")
    pending = count(server, {"flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}})
    assert pending
    path = purge_state(tmp_path, "PENDING")
    args = [str(path), "--db", str(db), "--api-url", server.url]
    code, screen = _apply_on_a_terminal(args, "n")
    assert code == 1, screen
    assert f"Apply {pending} changes to {server.url}?" in screen
    assert "purge-pending" in screen  # the plan was shown before the question
    assert "cancelled; nothing was changed." in screen
    assert count(server, {"flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}}) == pending
    assert scalar(db, "SELECT count(*) FROM policy_actions") == 0
    # Ctrl-C at the question: cancelled as an interruption (130), not click's "Aborted!" (1)
    code, screen = _apply_on_a_terminal(args, "^C")
    assert code == 130, screen
    assert "cancelled; nothing was changed." in screen and "Aborted" not in screen, screen
    assert count(server, {"flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}}) == pending
    assert scalar(db, "SELECT count(*) FROM policy_actions") == 0

    code, screen = _apply_on_a_terminal(args, "y")
    assert code == 0, screen
    assert count(server, {"flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}}) == 0
    assert scalar(db, "SELECT count(*) FROM policy_actions WHERE outcome = 'deleted'") == pending


# -- the classification step, as a table (pure) ------------------------------------------------

BEFORE = Seen("SCHEDULED", "s1", "Scheduled")
LOST = [
    # action, requested, after, history -> outcome (None: untouched, may be resent)
    ("delete", None, None, None, "deleted"),
    ("delete", None, Seen("SCHEDULED", "s1", "Scheduled"), None, None),
    ("delete", None, Seen("RUNNING", "s2", "Running"), None, "skipped"),
    ("set_state", "CANCELLED", Seen("CANCELLED", "s2", "Cancelled"), None, "accepted"),
    ("set_state", "CANCELLED", Seen("SCHEDULED", "s1", "Scheduled"), None, None),
    ("set_state", "CANCELLED", None, None, "gone"),
    (
        "set_state",
        "CANCELLED",
        Seen("RUNNING", "s3", "Running"),
        [
            {"id": "s1", "type": "SCHEDULED"},
            {"id": "s2", "type": "CANCELLED"},
            {"id": "s3", "type": "RUNNING"},
        ],
        "accepted",
    ),
    (
        "set_state",
        "CANCELLED",
        Seen("RUNNING", "s3", "Running"),
        [{"id": "s1", "type": "SCHEDULED"}, {"id": "s3", "type": "RUNNING"}],
        "skipped",
    ),
    (
        "set_state",
        "CANCELLED",
        Seen("RUNNING", "s3", "Running"),
        None,
        "pending",
    ),  # history unreadable
]


@pytest.mark.parametrize(("action", "requested", "after", "history", "expected"), LOST)
def test_a_lost_answer_is_classified_from_the_server_state(
    action: str,
    requested: str | None,
    after: Seen | None,
    history: list[dict[str, Any]] | None,
    expected: str | None,
) -> None:
    verdict = classify_lost(action, requested, BEFORE, after, history)
    assert (verdict.outcome.value if verdict else None) == expected
    # a run this apply changed is never recorded gone or skipped
    if (after is None and action == "delete") or (
        history and any(s["type"] == requested for s in history[1:])
    ):
        assert verdict is not None and verdict.outcome in (Outcome.DELETED, Outcome.ACCEPTED)


def test_a_state_history_is_judged_in_time_order_not_as_text() -> None:
    """Prefect writes a whole second as ``...:01Z`` and others as ``...:01.500000Z``: sorted as
    text, the later state comes first, and a requested state set after the run's state
    before the call (s2 after s1, 0.5 s later) read as before it (the run `skipped` though
    this apply set it)."""
    from flowsync.api.reads import in_time_order

    history = [
        {"id": "s1", "type": "RUNNING", "timestamp": "2026-12-07T10:00:01Z"},
        {"id": "s2", "type": "CANCELLED", "timestamp": "2026-12-07T10:00:01.500000Z"},
        {"id": "s3", "type": "FAILED", "timestamp": "2026-12-07T10:00:02.000001+00:00"},
    ]
    assert sorted(history, key=lambda s: s["timestamp"])[0]["id"] == "s2"  # the trap
    for given in (history, history[::-1], [history[1], history[0], history[2]]):
        assert [s["id"] for s in in_time_order(given)] == ["s1", "s2", "s3"]
    verdict = classify_lost(
        "set_state",
        "CANCELLED",
        Seen("RUNNING", "s1", "Running"),
        Seen("FAILED", "s3", "Failed"),
        in_time_order(history[::-1]),
    )
    assert verdict is not None and verdict.outcome is Outcome.ACCEPTED
    # a timestamp that is no time: the server's own order (by timestamp) stands
    odd: list[dict[str, Any]] = [
        {"id": "a", "timestamp": None},
        {"id": "b", "timestamp": "2026-12-07T10:00:00Z"},
    ]
    assert in_time_order(odd) == odd


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (None, "gone"),
        (Seen("RUNNING", "s2", "Running"), "skipped"),
        (Seen("SCHEDULED", "s1", "Scheduled"), "failed"),
    ],
)
def test_a_run_the_answer_did_not_act_on_is_read_back(after: Seen | None, expected: str) -> None:
    assert classify_unanswered(BEFORE, after).outcome.value == expected


def test_cli_apply_under_a_too_small_memory_cap_fails_clearly_before_any_call(
    mixed_db: Path,
) -> None:
    # apply caps DuckDB's memory like a pull (64 MB; --memory-limit overrides). Too small a
    # cap is one line naming the flag, before any request but the server's health check (a
    # server that answers only that: anything else would be answered 404).
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b"true" if self.path == "/api/health" else b"{}"
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = write(mixed_db.parent, DELETE_ALL)
    try:
        result = run_cli(
            "apply",
            str(path),
            "--db",
            str(mixed_db),
            "--yes",
            "--api-url",
            f"http://127.0.0.1:{server.server_address[1]}/api",
            "--memory-limit",
            "1",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 5, result.output
    assert result.stderr.count("\n") == 1 and "--memory-limit" in result.stderr
    assert "Traceback" not in result.output
    assert asked == ["/api/health"]
    assert scalar(mixed_db, "SELECT count(*) FROM policy_actions") == 0


def test_a_second_lost_answer_is_judged_against_the_state_its_own_call_guarded(
    tmp_path: Path,
) -> None:
    """Call 1 (guard COMPLETED) is answered 504 and the runs stay as they were; before the
    resend a worker moves them on to FAILED, which the rule still selects, so call 2 goes
    out with guard FAILED, and is answered 504 too while the server carries it out. The
    runs are deleted by this apply: judged against call 1's COMPLETED they looked changed
    by someone else and were recorded `skipped` at once, never waited for."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 4)])
    plan = plan_for(
        db,
        "version: 1\nrules:\n  - name: purge\n    action: delete\n    sql: SELECT id FROM "
        "flow_runs WHERE state_type IN ('COMPLETED', 'FAILED')\n",
    )
    calls: list[list[str]] = []
    reads_after = [0, 0]  # reads by id after call 1, after call 2

    def bulk(path: str, body: dict[str, Any]) -> httpx.Response:
        calls.append(list(body["flow_runs"]["id"]["any_"]))
        return httpx.Response(504, text="gateway timeout")

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("flow_runs/filter") and calls:
            reads_after[len(calls) - 1] += 1
            # The settle bound (1 s) is read out unchanged (reads 1-3, at 0, 0.5 and 1 s of
            # the client's clock); at the re-read before the resend (read 4) they moved on.
            if len(calls) == 1 and reads_after[0] == 4:
                for r in fake.runs.values():
                    moved = str(uuid.uuid4())
                    r.update(
                        state_type="FAILED",
                        state_name="Failed",
                        state_id=moved,
                        state={"id": moved, "type": "FAILED", "name": "Failed"},
                        updated="2030-01-01T00:00:00+00:00",
                    )
            if len(calls) == 2 and reads_after[1] == 2:  # call 2 done by its second settle read
                for i in calls[1]:
                    fake.runs.pop(i, None)
        return fake(request)

    fake = Recorder(bulk, api_rows(db))
    with Store.sandboxed_writer(db) as store, mock_client(server) as client:
        result = apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=1)
    assert [b["flow_runs"]["state"]["type"]["any_"] for _, b in fake.bulk] == [
        ["COMPLETED"],
        ["FAILED"],
    ]
    assert fake.runs == {}
    rows = query(db, "SELECT outcome, details->>'after_lost_answer' FROM policy_actions")
    assert [o for o, _ in rows] == ["deleted"] * 3, rows
    assert all("attempt 1" in str(lost) and "attempt 2" in str(lost) for _, lost in rows), rows
    assert result.counts == {"purge": {"deleted": 3}}


DELETE_COMPLETED = """version: 1
rules:
  - name: purge
    action: delete
    sql: SELECT id FROM flow_runs WHERE state_type = 'COMPLETED'
"""


def per_run_server(
    fake: Recorder, delete: Callable[[str, int], httpx.Response]
) -> Callable[[httpx.Request], httpx.Response]:
    """A server before 3.6.16 (no bulk endpoints): ``delete(run, n)`` answers the n-th
    ``DELETE /flow_runs/{id}`` (from 1); every other request goes to ``fake``."""
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/")
        if path == "admin/version":
            return httpx.Response(200, json="3.4.0")
        if request.method == "DELETE":
            sent.append(path.rsplit("/", 1)[-1])
            return delete(sent[-1], len(sent))
        return fake(request)

    return handler


def test_per_run_a_set_state_carried_out_but_answered_in_another_shape_is_read_back(
    tmp_path: Path,
) -> None:
    """Per run (a server before 3.6.16): each set_state is carried out, and answered 200 with
    a body that is no orchestration result. Each run is read back, audited `accepted` as the
    server has it, and never sent twice."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 4)])
    sent: list[str] = []

    def set_state(path: str, body: dict[str, Any]) -> httpx.Response:
        run_id = path.split("/")[1]
        sent.append(run_id)
        _moved(fake.runs[run_id], body["state"]["type"])
        return httpx.Response(200, json={"ok": True})

    fake = Recorder(set_state, api_rows(db))
    plan = plan_for(db, CANCEL_ALL)
    with (
        Store.sandboxed_writer(db) as store,
        mock_client(per_run_server(fake, lambda r, n: httpx.Response(404))) as client,
    ):
        result = apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=0)
    assert sorted(sent) == sorted(map(rid, range(1, 4)))
    assert result.counts == {"cancel": {"accepted": 3}}


def test_a_401_part_way_through_per_run_calls_records_what_the_calls_before_it_did(
    tmp_path: Path,
) -> None:
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = Recorder(lambda p, b: httpx.Response(404), api_rows(db))

    def delete(run_id: str, n: int) -> httpx.Response:
        if n == 3:
            return httpx.Response(401, json={"detail": "expired"})
        fake.runs.pop(run_id)
        return httpx.Response(204)

    plan = plan_for(db, DELETE_COMPLETED)
    with (
        Store.sandboxed_writer(db) as store,
        mock_client(per_run_server(fake, delete)) as client,
        pytest.raises(AuthError),
    ):
        apply_plan(client, store, plan, progress=NullProgress())
    gone = [i for i in map(rid, range(1, 6)) if i not in fake.runs]
    assert len(gone) == 2
    rows = dict(query(db, "SELECT CAST(flow_run_id AS VARCHAR), outcome FROM policy_actions"))
    assert {i: o for i, o in rows.items() if i in gone} == dict.fromkeys(gone, "deleted")
    assert sorted(o for i, o in rows.items() if i not in gone) == ["failed"] * 3
    marked = query(db, "SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE deleted_at IS NOT NULL")
    assert sorted(r[0] for r in marked) == sorted(gone)


def test_per_run_calls_after_a_lost_answer_wait_for_a_new_re_read(tmp_path: Path) -> None:
    """Per run (a server before 3.6.16; a DELETE has no state guard): the first DELETE's
    answer is lost and its run is read back; meanwhile run 3 is tagged protected. The
    DELETEs after it are not sent on the re-read from before the loss: run 3 stays."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = Recorder(lambda p, b: httpx.Response(404), api_rows(db))

    def delete(run_id: str, n: int) -> httpx.Response:
        if n == 1:
            raise httpx.ReadTimeout("no answer", request=httpx.Request("DELETE", run_id))
        fake.runs.pop(run_id)
        return httpx.Response(204)

    def sleep(seconds: float) -> None:  # the read-back's pauses: run 3 protected meanwhile
        fake.runs[rid(3)].update(tags=["keep"], updated="2099-01-01T00:00:00+00:00")

    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(per_run_server(fake, delete)),
        retry=RetryPolicy(attempts=2),
        sleep=sleep,
    )
    policy = "version: 1\nprotect_tags: [keep]\n" + DELETE_COMPLETED.removeprefix("version: 1\n")
    plan = plan_for(db, policy)
    with Store.sandboxed_writer(db) as store, client:
        apply_plan(client, store, plan, progress=NullProgress())
    assert list(fake.runs) == [rid(3)]
    rows = dict(
        query(db, "SELECT right(CAST(flow_run_id AS VARCHAR), 1), outcome FROM policy_actions")
    )
    assert rows == {"1": "deleted", "2": "deleted", "3": "skipped", "4": "deleted", "5": "deleted"}


def per_run_sends(
    tmp_path: Path, answer: Callable[[str, int], httpx.Response | None]
) -> tuple[dict[str, int], dict[str, str], ApplyResult]:
    """Runs 1-3 deleted one call each (a server before 3.6.16), two attempts: ``answer(run,
    its n-th send)`` answers a DELETE, or None to carry it out. Returns how often each run
    was sent, the audit's outcomes by run number, and the result."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 4)])
    fake = Recorder(lambda p, b: httpx.Response(404), api_rows(db))
    sends: dict[str, int] = {}

    def delete(run_id: str, n: int) -> httpx.Response:
        sends[run_id] = sends.get(run_id, 0) + 1
        said = answer(run_id, sends[run_id])
        if said is not None:
            return said
        fake.runs.pop(run_id)
        return httpx.Response(204)

    plan = plan_for(db, DELETE_COMPLETED)
    result = ApplyResult.new()
    with Store.sandboxed_writer(db) as store, mock_client(per_run_server(fake, delete)) as client:
        apply_plan(client, store, plan, progress=NullProgress(), result=result, settle_seconds=0)
    rows = dict(
        query(db, "SELECT right(CAST(flow_run_id AS VARCHAR), 1), outcome FROM policy_actions")
    )
    return sends, rows, result


def test_each_run_gets_its_attempts_when_an_earlier_run_of_its_batch_keeps_losing(
    tmp_path: Path,
) -> None:
    """Per run, two attempts: run 1's DELETE always times out (never done); run 2's first one
    times out, its second would succeed. The runs after a lost answer are re-read first, and
    that uses none of their attempts: run 2 is sent twice and deleted, run 1 fails once."""

    def answer(run_id: str, n: int) -> httpx.Response | None:
        if run_id == rid(1) or (run_id == rid(2) and n == 1):
            raise httpx.ReadTimeout("no answer", request=httpx.Request("DELETE", run_id))
        return None

    sends, rows, result = per_run_sends(tmp_path, answer)
    assert sends == {rid(1): 2, rid(2): 2, rid(3): 1}
    assert rows == {"1": "failed", "2": "deleted", "3": "deleted"}, rows
    assert result.errors == [
        "batch 1 (purge): 1 runs not done after 2 attempts (the last answer lost: attempt 1: "
        "ReadTimeout: no answer; attempt 2: ReadTimeout: no answer)"
    ], result.errors  # what the server did, on the line too (not only in the audit's rows)


def test_runs_never_sent_while_the_server_says_wait_use_none_of_their_attempts(
    tmp_path: Path,
) -> None:
    """Per run, two attempts: run 1's DELETE is answered 429 twice. Runs 2 and 3, after it,
    were never sent: they wait as told, are re-read and sent, and deleted; run 1 fails."""
    throttled = httpx.Response(429, headers={"Retry-After": "0"})
    sends, rows, _ = per_run_sends(tmp_path, lambda r, n: throttled if r == rid(1) else None)
    assert sends == {rid(1): 2, rid(2): 1, rid(3): 1}
    assert rows == {"1": "failed", "2": "deleted", "3": "deleted"}, rows


def test_per_run_calls_go_out_only_while_their_re_read_is_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per run, one DELETE after another: once the batch's re-read is older than FRESH_FOR
    (here by the time run 2's slow DELETE is answered), the runs not sent yet are re-read
    before the next DELETE. Run 3, protected while run 2's DELETE was out, stays. (FRESH_FOR
    0 would send nothing: per run the first call, too, goes out only on a fresh re-read.)"""
    from flowsync.policy import batch

    monkeypatch.setattr(batch, "FRESH_FOR", 0.5)
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = Recorder(lambda p, b: httpx.Response(404), api_rows(db))

    def delete(run_id: str, n: int) -> httpx.Response:
        if run_id == rid(2):
            fake.runs[rid(3)].update(tags=["keep"], updated="2099-01-01T00:00:00+00:00")
            time.sleep(0.6)
        fake.runs.pop(run_id)
        return httpx.Response(204)

    policy = "version: 1\nprotect_tags: [keep]\n" + DELETE_COMPLETED.removeprefix("version: 1\n")
    plan = plan_for(db, policy)
    with Store.sandboxed_writer(db) as store, mock_client(per_run_server(fake, delete)) as client:
        result = ApplyResult.new()
        apply_plan(client, store, plan, progress=NullProgress(), result=result)
    assert list(fake.runs) == [rid(3)]
    assert result.counts == {"purge": {"deleted": 4, "skipped": 1}}


def test_per_run_a_read_slower_than_a_call_may_follow_it_is_said_on_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per run, a rule joining deployments on a server whose deployments lookup takes longer
    than FRESH_FOR (0.3 s here): no call ever goes out on so old a read, and after its
    attempts the line says why (how old, the limit, what counts in it), not only that the
    runs were not done."""
    from flowsync.policy import batch

    monkeypatch.setattr(batch, "FRESH_FOR", 0.3)
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 3)])

    def answer(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "deployments/filter":
            time.sleep(0.4)
            return httpx.Response(200, json=[DEPLOYMENT])
        return httpx.Response(404)

    fake = Recorder(answer, api_rows(db))
    sent: list[str] = []

    def delete(run_id: str, n: int) -> httpx.Response:
        sent.append(run_id)
        return httpx.Response(204)

    server = per_run_server(fake, delete)
    result, plan = ApplyResult.new(), plan_for(db, JOINED)
    with Store.sandboxed_writer(db) as store, mock_client(server) as client:
        apply_plan(client, store, plan, progress=NullProgress(), result=result)
    assert sent == [] and len(fake.runs) == 2
    assert result.counts == {"purge": {"failed": 2}}
    [line] = result.errors
    assert line.startswith("batch 1 (purge): 2 runs not done after 2 attempts (never sent: ")
    assert "over the 0.3 s a call may follow it per run, where no state guard holds it" in line
    assert "reads of flows, deployments and other runs count" in line, line


def test_runs_never_sent_when_per_run_calls_stop_are_not_left_pending(tmp_path: Path) -> None:
    """The 3rd DELETE times out and the runs cannot be read back: the apply stops. Runs 4 and
    5 were never sent: recorded not sent, so the next apply does not credit this one with
    what happens to them (run 4 deleted by someone else meanwhile)."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = Recorder(lambda p, b: httpx.Response(404), api_rows(db))
    down = [False]

    def delete(run_id: str, n: int) -> httpx.Response:
        if n == 3:
            down[0] = True
            raise httpx.ReadTimeout("no answer", request=httpx.Request("DELETE", run_id))
        fake.runs.pop(run_id)
        return httpx.Response(204)

    def server(request: httpx.Request) -> httpx.Response:
        if down[0] and request.url.path.endswith("flow_runs/filter"):
            return httpx.Response(503, text="down")
        return handler(request)

    handler = per_run_server(fake, delete)
    plan = plan_for(db, DELETE_COMPLETED)
    first = ApplyResult.new()
    with Store.sandboxed_writer(db) as store, mock_client(server) as client:
        apply_plan(client, store, plan, progress=NullProgress(), result=first)
    by_run = dict(
        query(db, "SELECT right(CAST(flow_run_id AS VARCHAR), 1), outcome FROM policy_actions")
    )
    assert by_run == {"1": "deleted", "2": "deleted", "3": "pending", "4": "failed", "5": "failed"}
    down[0] = False
    fake.runs.pop(rid(4))  # someone else
    again = plan_for(db, DELETE_COMPLETED)
    with Store.sandboxed_writer(db) as store, mock_client(server) as client:
        apply_plan(client, store, again, progress=NullProgress(), settle_seconds=0)
    mine = dict(
        query(
            db,
            "SELECT right(CAST(flow_run_id AS VARCHAR), 1), outcome FROM policy_actions "
            "WHERE apply_id = ?",
            [first.apply_id],
        )
    )
    assert mine["4"] == "failed" and mine["5"] == "failed"


class Killed(BaseException):
    """kill -9, as far as the apply's own code can tell: nothing after it runs."""


def killed_with_its_call_out(db: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Apply ``policy`` to ``db`` and kill it (SIGKILL, as far as its code can tell) as its
    first call goes out, before the server got it: its runs are left ``pending``. Returns the
    fake server, which holds the runs as they were."""
    from flowsync.policy.settle import Settler

    fake = Recorder(lambda p, b: (_ for _ in ()).throw(Killed()), api_rows(db))
    plan = plan_for(db, policy)
    with monkeypatch.context() as killed:
        killed.setattr(Settler, "close_open_rows", lambda self, rows: None)  # no way out
        with (
            Store.sandboxed_writer(db) as store,
            mock_client(fake) as client,
            pytest.raises(Killed),
        ):
            apply_plan(client, store, plan, progress=NullProgress())
    return fake


def test_an_apply_with_nothing_to_send_settles_and_counts_a_killed_applys_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed with its first call out, the call never reached the server: the next apply,
    whose plan is empty, reads the 5 runs back, settles them `failed` (unchanged after the
    settle bound) under the killed apply, and counts all 5 as settled."""
    from flowsync import operations

    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = killed_with_its_call_out(db, DELETE_COMPLETED, monkeypatch)
    assert query(db, "SELECT outcome, count(*) FROM policy_actions GROUP BY 1") == [("pending", 5)]
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text(DELETE_COMPLETED.replace("'COMPLETED'", "'NO-SUCH-STATE'"))
    monkeypatch.setattr(
        "flowsync.api.PrefectClient",
        lambda settings, **kw: mock_client(Recorder(accept_all, fake.runs)),
    )
    applied = operations.apply(
        db, nothing, api=ApiSettings(url="http://prefect.test/api"), settle_seconds=0
    )
    assert applied.plan.total == 0 and applied.result is not None
    assert applied.result.resolved_earlier == 5 and applied.result.status == "success"
    assert query(db, "SELECT outcome, count(*) FROM policy_actions GROUP BY 1") == [("failed", 5)]


@pytest.mark.parametrize("lands", [True, False], ids=["lands-late", "never-lands"])
def test_a_killed_applys_runs_are_read_back_until_they_show_the_change_or_the_bound_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lands: bool
) -> None:
    """Killed with its call out; the server carries the call out late (after the next apply's
    second read back), or never. The next apply reads the runs back (0.5 s, doubling) until
    they show the change: `deleted` under the killed apply, 1.5 s of the 30 s bound waited; or,
    unchanged, until the bound has passed, then `failed`."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = killed_with_its_call_out(db, DELETE_COMPLETED, monkeypatch)
    later = Recorder(accept_all, fake.runs)
    reads: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("flow_runs/filter"):
            reads.append(1)
            if lands and len(reads) == 3:
                fake.runs.clear()  # the killed apply's call lands
        return later(request)

    pauses: list[float] = []
    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(attempts=2),
        sleep=pauses.append,
    )
    nothing = plan_for(db, DELETE_COMPLETED.replace("'COMPLETED'", "'NO-SUCH-STATE'"))
    with Store.sandboxed_writer(db) as store, client:
        result = apply_plan(client, store, nothing, progress=NullProgress(), settle_seconds=30)
    assert later.bulk == [] and result.resolved_earlier == 5
    outcome = "deleted" if lands else "failed"
    assert query(db, "SELECT outcome, count(*) FROM policy_actions GROUP BY 1") == [(outcome, 5)]
    if lands:
        assert pauses == [0.5, 1.0]
    else:
        assert pauses[:6] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0] and 29 < sum(pauses) <= 30


def test_a_killed_applys_run_that_cannot_be_settled_is_not_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed with a set_state call out; the run then shows another state, and its state
    history cannot be read: whether the killed apply set it is unknown. The next apply,
    whose rule still selects it, leaves it pending and does not send it again."""
    db = make_db(tmp_path / "r.duckdb", [run(1)])
    fake = killed_with_its_call_out(db, CANCEL_ALL, monkeypatch)
    moved = str(uuid.uuid4())
    fake.runs[rid(1)].update(
        state_type="RUNNING", state_name="Running", state_id=moved,
        state={"id": moved, "type": "RUNNING", "name": "Running"},
        updated="2030-01-01T00:00:00+00:00",
    )  # fmt: skip
    later = Recorder(accept_all, fake.runs)

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("flow_run_states/"):
            return httpx.Response(500, json={"exception_message": "Internal Server Error"})
        return later(request)

    again = plan_for(db, CANCEL_ALL)
    with Store.sandboxed_writer(db) as store, mock_client(server) as client:
        result = apply_plan(client, store, again, progress=NullProgress(), settle_seconds=0)
    assert later.bulk == []
    assert query(db, "SELECT outcome FROM policy_actions") == [("pending",)]
    assert result.resolved_earlier == 0
    assert any("could not be settled" in e for e in result.errors), result.errors


def test_a_pending_row_of_an_action_this_flowsync_does_not_know_stays_pending_and_unsent(
    tmp_path: Path,
) -> None:
    """A newer flowsync's apply killed with a call out whose action this flowsync does not
    know (its ``pending`` row, same schema): what that call did cannot be read from the run
    by this flowsync's rules (it settled it ``failed``, ``gone`` or ``skipped`` under that
    apply, a wrong record the newer one then never settles). The row stays pending for a
    flowsync that knows the action, the run is not sent by this apply, and the apply says
    to upgrade; the other runs are applied."""
    from flowsync.store import audit

    db = make_db(tmp_path / "r.duckdb", [run(1), run(2)])
    fake = Recorder(accept_all, api_rows(db))
    with Store.writer(db) as store:
        store.execute(
            "UPDATE flow_runs SET state_id = CAST(? AS UUID) WHERE id = CAST(? AS UUID)",
            [fake.runs[rid(1)]["state_id"], rid(1)],
        )
        call = audit.Call(
            "newer-apply", "http://prefect.test/api", "p.yaml", "0" * 64, 1, "tag", "set_tags",
            {"tags": ["archived"]},
        )  # fmt: skip
        audit.record_runs(store, call, [(rid(1), "COMPLETED", "pending", None)])
    plan = plan_for(db, DELETE_COMPLETED)
    with Store.sandboxed_writer(db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=0)
    assert query(db, "SELECT outcome FROM policy_actions WHERE apply_id = 'newer-apply'") == [
        ("pending",)
    ]
    sent = [i for _, body in fake.bulk for i in body["flow_runs"]["id"]["any_"]]
    assert sent == [rid(2)]
    assert result.resolved_earlier == 0 and result.status != "success"
    assert any("'set_tags'" in e and "upgrade flowsync" in e for e in result.errors), result.errors


@pytest.mark.parametrize("outcome", ["sending", "resent"])
def test_a_row_with_an_outcome_this_flowsync_does_not_know_leaves_its_run_unsent_and_unchanged(
    tmp_path: Path, outcome: str
) -> None:
    """A newer flowsync's apply left a row whose outcome this flowsync does not know (same
    schema: an outcome is a value, not a migration), e.g. a call out under another name than
    ``pending``. Whether that call changed the run cannot be told by this flowsync: sending
    the run again would have the newer flowsync credit its apply with this one's change (or
    this one credit itself with that one's). As for an unknown action: the row stays as it
    is, the run is not sent, and the apply says to upgrade; the other runs are applied."""
    from flowsync.store import audit

    db = make_db(tmp_path / "r.duckdb", [run(1), run(2)])
    fake = Recorder(accept_all, api_rows(db))
    with Store.writer(db) as store:
        call = audit.Call(
            "newer-apply", "http://prefect.test/api", "p.yaml", "0" * 64, 1, "purge", "delete", None
        )
        audit.record_runs(store, call, [(rid(1), "COMPLETED", outcome, None)])
    before = query(db, "SELECT * FROM policy_actions")
    plan = plan_for(db, DELETE_COMPLETED)
    with Store.sandboxed_writer(db) as store, mock_client(fake) as client:
        result = apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=0)
    sent = [i for _, body in fake.bulk for i in body["flow_runs"]["id"]["any_"]]
    assert sent == [rid(2)]
    assert query(db, "SELECT * FROM policy_actions WHERE apply_id = 'newer-apply'") == before
    assert result.status != "success"
    assert any(repr(outcome) in e and "upgrade flowsync" in e for e in result.errors), result.errors


def test_ctrl_c_during_per_run_calls_leaves_pending_only_the_run_whose_request_was_out(
    tmp_path: Path,
) -> None:
    """Per run, each run is its own call with its own pending row: Ctrl-C during the 3rd
    DELETE leaves runs 4 and 5 unrecorded (never sent), so the next apply credits the
    interrupted one with nothing that happens to them (run 4 deleted by someone else)."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    fake = Recorder(lambda p, b: httpx.Response(404), api_rows(db))

    def delete(run_id: str, n: int) -> httpx.Response:
        if n == 3:
            raise KeyboardInterrupt
        fake.runs.pop(run_id)
        return httpx.Response(204)

    first = ApplyResult.new()
    plan = plan_for(db, DELETE_COMPLETED)
    with (
        Store.sandboxed_writer(db) as store,
        mock_client(per_run_server(fake, delete)) as client,
        pytest.raises(KeyboardInterrupt),
    ):
        apply_plan(client, store, plan, progress=NullProgress(), result=first)
    audit = "SELECT right(CAST(flow_run_id AS VARCHAR), 1), outcome FROM policy_actions"
    assert dict(query(db, audit)) == {"1": "deleted", "2": "deleted", "3": "pending"}
    fake.runs.pop(rid(4))  # someone else
    again = plan_for(db, DELETE_COMPLETED)
    with (
        Store.sandboxed_writer(db) as store,
        mock_client(per_run_server(fake, lambda r, n: httpx.Response(204))) as client,
    ):
        apply_plan(client, store, again, progress=NullProgress(), settle_seconds=0)
    mine = dict(query(db, audit + " WHERE apply_id = ?", [first.apply_id]))
    assert mine == {"1": "deleted", "2": "deleted", "3": "failed"}  # 3: read back unchanged


def test_no_commit_of_an_apply_makes_duckdb_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB checkpoints inside the commit that takes its WAL past the threshold (0.4-1 s at
    a million runs): apply makes that checkpoint itself between batches
    (``Writer.checkpoint_early``), so no commit of its own, the audit rows right before a
    call among them, ever does. Thresholds shrunk so that the apply crosses them; the
    server's answers do not matter here (a fake one)."""
    from contextlib import contextmanager

    from flowsync.store import roles, session

    # DuckDB checkpoints in a commit when the WAL plus its own estimate of that commit passes
    # the threshold: early at THRESHOLD - MARGIN (64 KB); 50 batches of 5 write WAL past it
    # often. Without the early checkpoints a commit checkpoints at ~270 KB of WAL here.
    monkeypatch.setattr(roles, "WRITE_CHECKPOINT", 2**20)
    monkeypatch.setattr(roles, "CHECKPOINT_MARGIN", 2**20 - 64 * 1024)
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 251)])
    fake = Recorder(accept_all, api_rows(db))
    plan = plan_for(db, DELETE_COMPLETED)
    wal = Path(f"{db}.wal")
    size = lambda: wal.stat().st_size if wal.exists() else 0  # noqa: E731
    shrunk: list[tuple[int, int]] = []
    early: list[bool] = []
    transaction = session.Session.transaction
    checkpoint_early = roles.Writer.checkpoint_early

    @contextmanager
    def watched(self: session.Session) -> Iterator[None]:
        before = size()
        with transaction(self):
            yield
        if size() < before:
            shrunk.append((before, size()))

    def counted(self: roles.Writer) -> bool:
        done = checkpoint_early(self)
        early.append(done)
        return done

    monkeypatch.setattr(session.Session, "transaction", watched)
    monkeypatch.setattr(roles.Writer, "checkpoint_early", counted)
    result = ApplyResult.new()
    with Store.sandboxed_writer(db) as store, mock_client(fake) as client:
        apply_plan(client, store, plan, progress=NullProgress(), result=result, batch_size=5)
    assert result.status == "success" and result.done == 250
    assert shrunk == [], "a commit checkpointed (its WAL shrank)"
    assert sum(early) >= 3, "the WAL never came near the threshold: the test proves nothing"


def test_runs_with_large_parameters_are_applied_and_audited_under_the_writers_cap(
    tmp_path: Path,
) -> None:
    """50 runs with 200 KB of parameters each, as the server answers the re-read (10 MB of
    JSON in one batch): the audit's rows are staged a few MB at a time under the writer's
    64 MB cap, as a pull's are; every run deleted and audited with its row."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 51)])
    rows = api_rows(db)
    for i, row in enumerate(rows.values()):
        row["parameters"] = {"files": [f"s3://bucket/{i}/" + "x" * 90] * 2000}
    fake = Recorder(accept_all, rows)
    plan = plan_for(db, DELETE_COMPLETED)
    result = ApplyResult.new()
    with Store.sandboxed_writer(db) as store, mock_client(fake) as client:
        apply_plan(client, store, plan, progress=NullProgress(), result=result)
    assert result.counts == {"purge": {"deleted": 50}}
    assert query(
        db,
        "SELECT count(*), min(length(CAST(run_row->'parameters' AS VARCHAR))) FROM policy_actions "
        "WHERE outcome = 'deleted'",
    ) == [(50, len(json.dumps(next(iter(rows.values()))["parameters"], separators=(",", ":"))))]


def interrupted_apply(db: Path, policy: str, handler: Handler, **options: Any) -> ApplyResult:
    """apply ``policy`` on ``db`` against ``handler`` (a fake server), which raises
    KeyboardInterrupt (Ctrl-C) at some request: what the interrupted apply counted."""
    plan = plan_for(db, policy)
    result = ApplyResult.new()
    with (
        Store.sandboxed_writer(db) as store,
        mock_client(handler) as client,
        pytest.raises(KeyboardInterrupt),
    ):
        apply_plan(client, store, plan, progress=NullProgress(), result=result, **options)
    return result


def _moved(row: dict[str, Any], state: str) -> None:
    """``row`` (a fake server's run) now in ``state``, as a new state."""
    sid = str(uuid.uuid4())
    row.update(
        state_type=state,
        state_name=state.title(),
        state_id=sid,
        state={"id": sid, "type": state, "name": state.title()},
        updated="2099-01-01T00:00:00+00:00",
    )


def test_a_run_counted_pending_then_read_back_after_ctrl_c_is_counted_once(
    tmp_path: Path,
) -> None:
    """Batch 1's set_state answer is lost (500) while run 1 moves to RUNNING, and its state
    history cannot be read: recorded and counted `pending`. Ctrl-C with batch 3's call out;
    the read-back of this apply's open rows finds run 1 CANCELLED too: its `pending` count
    becomes `accepted`, not a second outcome."""
    db = make_db(tmp_path / "r.duckdb", [run(1), run(2), run(3)])
    calls = [0]

    def answer(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "flow_runs/bulk_set_state":
            calls[0] += 1
            if calls[0] == 1:
                _moved(fake.runs[rid(1)], "RUNNING")
                return httpx.Response(500, json={"exception_message": "Internal Server Error"})
            if calls[0] == 3:  # Ctrl-C with batch 3's call out (it went through)
                _moved(fake.runs[rid(1)], "CANCELLED")
                _moved(fake.runs[rid(3)], "CANCELLED")
                raise KeyboardInterrupt
        if path.startswith("flow_run_states"):
            return httpx.Response(500, json={"exception_message": "Internal Server Error"})
        return accept_all(path, body)

    fake = Recorder(answer, api_rows(db))
    result = interrupted_apply(db, CANCEL_ALL, fake, batch_size=1, settle_seconds=0)
    outcomes = [o for (o,) in query(db, "SELECT outcome FROM policy_actions")]
    assert sorted(outcomes) == ["accepted"] * 3
    assert result.counts == {"cancel": {"accepted": 3}}, result.counts


def test_ctrl_c_while_a_call_is_in_flight_keeps_the_rows_of_its_batchs_runs_not_sent(
    tmp_path: Path,
) -> None:
    """Batch 1: run 2 was tagged protected since the pull (not sent: `skipped`), run 1 sent,
    its call left in flight while batch 2 is re-read. Ctrl-C then: run 2's row is written
    already, and the read-back settles run 1."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 5)])
    rows = api_rows(db)
    rows[rid(2)].update(tags=["keep"], updated="2099-01-01T00:00:00+00:00")
    fake = Recorder(accept_all, rows)

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        ids = body.get("flow_runs", {}).get("id", {}).get("any_") or []
        if request.url.path.endswith("flow_runs/filter") and rid(3) in ids:
            raise KeyboardInterrupt  # Ctrl-C during batch 2's re-read
        if request.url.path.endswith("bulk_delete"):
            for i in ids:
                fake.runs.pop(i, None)
        return fake(request)

    result = interrupted_apply(db, DELETE_ALL, server, batch_size=2)
    audit = "SELECT right(CAST(flow_run_id AS VARCHAR), 1), outcome FROM policy_actions"
    assert dict(query(db, audit)) == {"1": "deleted", "2": "skipped"}
    assert result.counts == {"purge": {"deleted": 1, "skipped": 1}}


def reread_ids(request: httpx.Request) -> list[str] | None:
    """The runs a re-read asks for (``/flow_runs/filter`` by id alone), else None."""
    body = json.loads(request.content) if request.content else {}
    if request.url.path.endswith("flow_runs/filter") and set(body.get("flow_runs", {})) == {"id"}:
        return list(body["flow_runs"]["id"]["any_"])
    return None


def paced_apply(
    db: Path,
    policy: str,
    answer: Callable[[Recorder, str, dict[str, Any]], httpx.Response],
    *,
    per_run: bool = False,
    per_minute: float = 12,
    protect: str | None = None,
    latency: Callable[[httpx.Request], float] = lambda r: 0.0,
    before: Callable[[Recorder], object] = lambda fake: None,
) -> tuple[list[tuple[str, Any]], Recorder, ApplyResult]:
    """apply ``policy`` on ``db`` against a fake server (``answer``: its bulk calls; per run:
    DELETEs carried out) behind a request budget of ``per_minute`` on a fake clock, each
    request taking ``latency(request)`` seconds of it. Returns what happened in order: a
    re-read by id ("read", ids), a deployments read ("lookup", ids), a call ("call", ids), a
    budget wait ("wait", seconds), and ``protect``, tagged `keep` during the first wait after
    it was read and before it was sent ("protected", [id])."""
    events: list[tuple[str, Any]] = []
    now = [0.0]

    def called(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "deployments/filter":
            events.append(("lookup", body["deployments"]["id"]["any_"]))
            return httpx.Response(200, json=[DEPLOYMENT])
        events.append(("call", [i for i in body["flow_runs"]["id"]["any_"] if i in fake.runs]))
        return answer(fake, path, body)

    def delete(run_id: str, n: int) -> httpx.Response:
        events.append(("call", [run_id]))
        fake.runs.pop(run_id)
        return httpx.Response(204)

    fake = Recorder(called, api_rows(db))
    before(fake)

    def sleep(seconds: float) -> None:
        events.append(("wait", seconds))
        now[0] += seconds
        done = {i for kind, ids in events if kind in ("call", "protected") for i in ids}
        if (
            protect is not None
            and protect in {i for k, ids in events if k == "read" for i in ids} - done
        ):
            fake.runs[protect].update(tags=["keep"], updated="2099-01-01T00:00:00+00:00")
            events.append(("protected", [protect]))

    def server(request: httpx.Request) -> httpx.Response:
        if (ids := reread_ids(request)) is not None:
            events.append(("read", ids))
        now[0] += latency(request)
        return (per_run_server(fake, delete) if per_run else fake)(request)

    result = ApplyResult.new()
    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(attempts=2),
        sleep=lambda s: None,
        budget=RequestBudget(per_minute, clock=lambda: now[0], sleep=sleep),
    )
    plan = plan_for(db, policy)
    with Store.sandboxed_writer(db) as store, client:
        apply_plan(
            client, store, plan, progress=NullProgress(), result=result, settle_seconds=0,
            batch_size=2 if "keep_newest" in policy else 50,
        )  # fmt: skip
    return events, fake, result


def no_wait_between_a_re_read_and_its_call(events: list[tuple[str, Any]]) -> None:
    for n, (kind, ids) in enumerate(events):
        if kind == "call" and ids:
            read = max(k for k in range(n) if events[k][0] == "read" and ids[0] in events[k][1])
            assert not [e for e in events[read:n] if e[0] == "wait"], (
                f"the budget held {ids} back after the re-read that checked it: "
                f"{events[read : n + 1]}"
            )


DEPLOYMENT = {
    "id": DEPLOYMENTS["prod"],
    "name": "prod",
    "flow_id": FLOW,
    "created": "2026-01-01T00:00:00+00:00",
    "updated": "2026-01-01T00:00:00+00:00",
}


def delete_all(fake: Recorder, path: str, body: dict[str, Any]) -> httpx.Response:
    ids = [i for i in body["flow_runs"]["id"]["any_"] if fake.runs.pop(i, None)]
    return httpx.Response(200, json={"deleted": ids})


@pytest.mark.parametrize("per_run", [False, True], ids=["bulk", "per-run"])
@pytest.mark.parametrize("joins", [False, True], ids=["runs", "joining-deployments"])
def test_no_call_waits_for_the_request_budget_after_its_re_read(
    tmp_path: Path, per_run: bool, joins: bool
) -> None:
    """--max-requests-per-minute (12: a slot every 5 s on a fake clock): the budget's waits fall
    before the re-reads, never between a re-read and the call it checked (nor before the
    deployments a joining rule reads after the runs). Run 3, protected during the first wait
    after it was read, is seen by the next re-read and kept."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    policy = "version: 1\nprotect_tags: [keep]\n" + DELETE_COMPLETED.removeprefix("version: 1\n")
    if joins:
        policy = policy.replace(
            "SELECT id FROM flow_runs WHERE",
            "SELECT r.id FROM flow_runs r JOIN deployments d ON d.id = r.deployment_id WHERE",
        )
    events, fake, result = paced_apply(db, policy, delete_all, per_run=per_run, protect=rid(3))
    no_wait_between_a_re_read_and_its_call(events)
    protected = [i for kind, ids in events if kind == "protected" for i in ids]
    assert not [i for i in protected if i not in fake.runs], f"protected, then deleted: {events}"
    deleted = [i for kind, ids in events if kind == "call" for i in ids]
    assert sorted(deleted + list(fake.runs)) == sorted(map(rid, range(1, 6)))
    assert result.counts == {
        "purge": {"deleted": len(deleted), **({"skipped": 1} if protected else {})}
    }
    if per_run:  # one call a slot: every call after the first of a re-read waited for a new one
        assert protected == [rid(3)] and len(deleted) == 4
    if joins:  # the deployment was read inside the window, after the runs
        kinds = [kind for kind, _ in events if kind in ("read", "lookup", "call")]
        assert kinds[:3] == ["read", "lookup", "call"]


def test_no_ranking_round_waits_for_the_request_budget_after_the_batch_was_read(
    tmp_path: Path,
) -> None:
    """keep_newest 2, batches of 2; the newest run (6) was deleted on the server since the
    pull, so the first round for runs 1 and 2 (with the kept 5 and 6) moves the kept runs to 4
    and 5, and a second round reads 4: inside the window, without a wait."""
    db = make_db(tmp_path / "r.duckdb", [run(i, days_ago=40 - i) for i in range(1, 7)])
    keep_two = DELETE_COMPLETED.replace("action: delete", "action: delete\n    keep_newest: 2")
    events, fake, _ = paced_apply(
        db,
        "version: 1\nprotect_tags: [keep]\n" + keep_two.removeprefix("version: 1\n"),
        delete_all,
        protect=rid(1),
        before=lambda fake: fake.runs.pop(rid(6)),
    )
    assert [ids for kind, ids in events if kind == "read"][:2] == [
        sorted([rid(1), rid(2), rid(5), rid(6)]),
        [rid(4)],
    ]
    no_wait_between_a_re_read_and_its_call(events)
    assert sorted(fake.runs) == [rid(4), rid(5)]


def test_a_later_call_goes_back_to_a_re_read_after_the_budget_held_a_read_back(
    tmp_path: Path,
) -> None:
    """One batch in two state types (two calls). The first call's accepted runs are read back,
    and that read waits for the budget (600 a minute; a read answers in a slot's time, so the
    budget is free again by then): the second call goes out only on a new re-read."""
    db = make_db(tmp_path / "r.duckdb", [run(i, state="SCHEDULED") for i in (1, 2, 3)])

    def cancel(fake: Recorder, path: str, body: dict[str, Any]) -> httpx.Response:
        for i in body["flow_runs"]["id"]["any_"]:
            _moved(fake.runs[i], "CANCELLED")
        return accept_all(path, body)

    events, _, result = paced_apply(
        db,
        CANCEL_ALL,
        cancel,
        per_minute=600,
        latency=lambda r: 0.05 if "bulk" in r.url.path else 0.1,
        before=lambda fake: _moved(fake.runs[rid(3)], "PENDING"),
    )
    assert len([e for e in events if e[0] == "call"]) == 2, events
    no_wait_between_a_re_read_and_its_call(events)
    assert result.counts == {"cancel": {"accepted": 3}}


def budgeted(
    handler: Callable[[httpx.Request], httpx.Response],
    now: list[float],
    events: list[tuple[str, Any]],
    per_minute: float,
) -> PrefectClient:
    """A client of ``handler`` behind a budget of ``per_minute`` on the fake clock ``now``;
    its waits are ("wait", seconds) events."""

    def sleep(seconds: float) -> None:
        events.append(("wait", seconds))
        now[0] += seconds

    return PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(attempts=3),
        sleep=lambda s: None,
        budget=RequestBudget(per_minute, clock=lambda: now[0], sleep=sleep),
    )


CANCEL_SCHEDULED = """version: 1
rules:
  - name: cancel
    action: set_state
    state: {type: CANCELLED, name: Cancelled}
    sql: SELECT id FROM flow_runs WHERE state_type = 'SCHEDULED'
"""


def test_a_lost_answers_history_is_read_inside_the_window_without_a_wait(tmp_path: Path) -> None:
    """set_state, runs 1 and 2 SCHEDULED, 6 requests a minute. The first bulk call's answer
    is lost (504) and the settle read shows both unchanged; before the re-read, a worker moves
    run 1 to RUNNING. The re-read drops run 1; the decision reads its state history (it was in
    a lost call) inside the window, without waiting for the budget, then run 2's call goes."""
    db = make_db(tmp_path / "r.duckdb", [run(i, state="SCHEDULED") for i in (1, 2)])
    events: list[tuple[str, Any]] = []
    now = [0.0]
    calls = [0]

    def bulk(path: str, body: dict[str, Any]) -> httpx.Response:
        calls[0] += 1
        if calls[0] == 1:
            return httpx.Response(504, text="gateway timeout")
        return accept_all(path, body)

    fake = Recorder(bulk, api_rows(db))
    reads_after_call = [0]

    def server(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/")
        body = json.loads(request.content) if request.content else {}
        if path == "flow_runs/filter" and set(body.get("flow_runs", {})) == {"id"}:
            if calls[0] == 1:
                reads_after_call[0] += 1
                if reads_after_call[0] == 2:  # after the settle read, before the re-read
                    _moved(fake.runs[rid(1)], "RUNNING")
            events.append(("read", body["flow_runs"]["id"]["any_"]))
        elif path.startswith("flow_run_states"):
            events.append(("history", path))
            return httpx.Response(200, json=[])
        elif path.startswith("flow_runs/bulk"):
            events.append(("call", body["flow_runs"]["id"]["any_"]))
        return fake(request)

    plan = plan_for(db, CANCEL_SCHEDULED)
    result = ApplyResult.new()
    with Store.sandboxed_writer(db) as store, budgeted(server, now, events, 6) as client:
        apply_plan(client, store, plan, progress=NullProgress(), result=result, settle_seconds=0)
    second = max(n for n, e in enumerate(events) if e[0] == "call")
    read = max(n for n in range(second) if events[n][0] == "read")
    assert not [e for e in events[read:second] if e[0] == "wait"], events[read : second + 1]


def test_a_read_the_server_holds_back_inside_the_window_is_read_again_before_any_call(
    tmp_path: Path,
) -> None:
    """A rule joining deployments: the runs are read, then their deployment (inside the
    window) is answered 429 Retry-After 20 once. The read is retried after 20 s, while run 3
    is tagged `keep` on the server: nothing goes out on the runs read before that wait; they
    are read again, and run 3 is kept."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 6)])
    policy = "version: 1\nprotect_tags: [keep]\n" + DELETE_COMPLETED.removeprefix(
        "version: 1\n"
    ).replace(
        "SELECT id FROM flow_runs WHERE",
        "SELECT r.id FROM flow_runs r JOIN deployments d ON d.id = r.deployment_id WHERE",
    )
    events: list[tuple[str, Any]] = []
    now = [0.0]
    throttled = [False]

    def answer(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "deployments/filter":
            if not throttled[0]:
                throttled[0] = True
                events.append(("429", path))
                return httpx.Response(429, headers={"Retry-After": "20"})
            return httpx.Response(200, json=[DEPLOYMENT])
        events.append(("call", body["flow_runs"]["id"]["any_"]))
        return delete_all(fake, path, body)

    fake = Recorder(answer, api_rows(db))

    def server(request: httpx.Request) -> httpx.Response:
        if (ids := reread_ids(request)) is not None:
            events.append(("read", ids))
        return fake(request)

    def client_sleep(seconds: float) -> None:
        events.append(("sleep", seconds))
        now[0] += seconds
        fake.runs[rid(3)].update(tags=["keep"], updated="2099-01-01T00:00:00+00:00")

    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(attempts=3),
        sleep=client_sleep,
        budget=RequestBudget(600, clock=lambda: now[0], sleep=lambda s: None),
    )
    plan = plan_for(db, policy)
    with Store.sandboxed_writer(db) as store, client:
        apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=0)
    assert rid(3) in fake.runs, (
        f"run 3, protected during a sleep inside its window, was deleted: {events}"
    )
    assert [e[0] for e in events if e[0] in ("read", "429", "sleep", "call")][:5] == [
        "read",
        "429",
        "sleep",
        "read",
        "call",
    ]


JOINED = DELETE_COMPLETED.replace(
    "SELECT id FROM flow_runs WHERE",
    "SELECT r.id FROM flow_runs r JOIN deployments d ON d.id = r.deployment_id WHERE",
)


def apply_through(
    db: Path, policy: str, server: Handler, tries: int, **options: Any
) -> ApplyResult:
    """apply ``policy`` on ``db`` against ``server``, each read tried ``tries`` times (retries
    unslept)."""
    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(attempts=tries),
        sleep=lambda s: None,
    )
    result = ApplyResult.new()
    plan = plan_for(db, policy)
    with Store.sandboxed_writer(db) as store, client:
        apply_plan(
            client, store, plan, progress=NullProgress(), result=result, settle_seconds=0,
            **options,
        )  # fmt: skip
    return result


def busy_lookups(fake: Recorder, busy: Callable[[], bool] = lambda: True) -> Handler:
    """``fake`` behind a SQLite-backed server that, while ``busy()``, answers each deployments
    lookup 503 ("database is locked") on its first try and 200 on its retry."""
    tries = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("deployments/filter"):
            tries[0] += busy()
            if busy() and tries[0] % 2 == 1:
                return httpx.Response(503, json={"exception_message": "database is locked"})
            return httpx.Response(200, json=[DEPLOYMENT])
        return fake(request)

    return handler


def test_a_busy_servers_503_retried_inside_the_window_does_not_stop_the_batch(
    tmp_path: Path,
) -> None:
    """Each window's deployments lookup is answered 503 once, then 200 at once: the re-read is
    still fresh, so the batch is sent (not sent back to step 1 until its attempts run out)."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 4)])
    fake = Recorder(lambda p, b: delete_all(fake, p, b), api_rows(db))
    result = apply_through(db, JOINED, busy_lookups(fake), tries=7)
    assert fake.runs == {} and result.counts == {"purge": {"deleted": 3}}


def test_a_batch_checked_while_a_busy_server_runs_the_call_before_it_is_sent(
    tmp_path: Path,
) -> None:
    """Two batches of a rule joining deployments: the second is checked while the first's call
    is in flight, and the server, busy with that call, answers each lookup 503 once."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 5)])
    busy = threading.Event()

    def answer(path: str, body: dict[str, Any]) -> httpx.Response:
        busy.set()
        time.sleep(0.3)  # the write holds SQLite's lock meanwhile
        busy.clear()
        return delete_all(fake, path, body)

    fake = Recorder(answer, api_rows(db))
    result = apply_through(db, JOINED, busy_lookups(fake, busy.is_set), tries=3, batch_size=2)
    assert fake.runs == {} and result.counts == {"purge": {"deleted": 4}}


@pytest.mark.parametrize(
    "first",
    [
        httpx.Response(200, content=b'[{"id": "'),
        httpx.Response(503, json={"exception_message": "busy"}),
    ],
    ids=["truncated", "503"],
)
def test_a_first_read_retried_before_anything_answered_ages_nothing(
    tmp_path: Path, first: httpx.Response
) -> None:
    """The window's first read fails once (a body cut short, a 503), its retry answers: nothing
    had been read before it, so the runs are sent, with one attempt."""
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 4)])
    fake = Recorder(lambda p, b: delete_all(fake, p, b), api_rows(db))
    reads = [0]

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("flow_runs/filter"):
            reads[0] += 1
            if reads[0] == 1:
                return first
        return fake(request)

    apply_through(db, DELETE_COMPLETED, server, tries=2, attempts=1)
    assert fake.runs == {}


def test_a_window_held_back_by_the_server_is_as_old_as_its_first_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's runs are read in two pages (of 2 here); the second is held back by a 429
    (Retry-After 0.2 s, a real sleep), then the deployments lookup takes 0.2 s: page 1's rows
    are ~0.4 s old, over FRESH_FOR (0.3 s here), so the batch is read again before its call."""
    from flowsync.api import pagination
    from flowsync.policy import batch

    monkeypatch.setattr(batch, "FRESH_FOR", 0.3)
    monkeypatch.setattr(pagination.pages_by_id, "__defaults__", (2,))
    db = make_db(tmp_path / "r.duckdb", [run(i) for i in range(1, 5)])
    events: list[tuple[str, Any]] = []
    held = [False]

    def answer(path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "deployments/filter":
            time.sleep(0.2)
            events.append(("lookup", time.monotonic()))
            return httpx.Response(200, json=[DEPLOYMENT])
        events.append(("call", time.monotonic()))
        return delete_all(fake, path, body)

    fake = Recorder(answer, api_rows(db))

    def server(request: httpx.Request) -> httpx.Response:
        if reread_ids(request) is not None:
            if len([e for e in events if e[0] == "read"]) == 1 and not held[0]:
                held[0] = True
                events.append(("429", time.monotonic()))
                return httpx.Response(429, headers={"Retry-After": "0.2"})
            events.append(("read", time.monotonic()))
        return fake(request)

    client = PrefectClient(
        ApiSettings(url="http://prefect.test/api"),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(attempts=3),
    )
    plan = plan_for(db, JOINED)
    with Store.sandboxed_writer(db) as store, client:
        apply_plan(client, store, plan, progress=NullProgress(), settle_seconds=0, batch_size=4)
    # The held-back window (read, 429, read, lookup) sends nothing; the call goes out on a
    # window read again, in which the server held nothing back. (Said by the order of what
    # the server saw, not by a clock: on a loaded machine the second window may itself take
    # longer than FRESH_FOR, which is no reason to read it again: nothing slept in it.)
    kinds = [k for k, _ in events]
    assert kinds == ["read", "429", "read", "lookup", "read", "read", "lookup", "call"], kinds


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"type": "SCHEDULED", "name": "Scheduled", "id": "s1"}, "rejected"),  # left as it was
        ({"type": "CANCELLED", "name": "Cancelled", "id": "s2"}, "replaced"),  # set instead
        ({"type": "CANCELLED", "name": "Cancelled"}, "rejected"),  # no id: proves nothing
        (None, "rejected"),
    ],
)
def test_a_reject_that_carries_a_new_state_is_replaced(
    state: dict[str, Any] | None, expected: str
) -> None:
    rejected = RunResult(Outcome.REJECTED, {"status": "REJECT", "state": state})
    assert set_instead(rejected, BEFORE).outcome.value == expected
    accepted = RunResult(Outcome.ACCEPTED, {"status": "ACCEPT", "state": state})
    assert set_instead(accepted, BEFORE).outcome is Outcome.ACCEPTED


@pytest.mark.parametrize("fault", ["503", "dropped"])
def test_a_server_whose_version_cannot_be_read_is_sent_nothing(mixed_db: Path, fault: str) -> None:
    """``GET /admin/version`` fails twice (a busy server's 503, a dropped connection): which
    calls apply may send, and the guards they carry, rest on that version. Not taken to be
    current (as a proxy hiding ``/admin`` is): nothing is written, and the line says to run
    apply again."""
    from flowsync.errors import ApiError

    fake = Recorder(accept_all, api_rows(mixed_db))
    fake_version = fake.__call__

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/admin/version"):
            fake.bodies.append(("admin/version", {}))
            if fault == "dropped":
                raise httpx.RemoteProtocolError("Server disconnected", request=request)
            return httpx.Response(503, text="busy")
        return fake_version(request)

    plan = plan_for(mixed_db, DELETE_ALL)
    with (
        Store.sandboxed_writer(mixed_db) as store,
        mock_client(answer) as client,
        pytest.raises(ApiError, match=r"^GET /admin/version failed .*nothing was sent"),
    ):
        apply_plan(client, store, plan)
    assert [p for p, _ in fake.bodies] == ["health", "admin/version", "admin/version"]
    assert scalar(mixed_db, "SELECT count(*) FROM policy_actions") == 0


@pytest.mark.parametrize("version", ["4.0.0", "2.20.3", "4", "Prefect 4.0.0"])
def test_a_server_of_another_prefect_major_is_sent_nothing(mixed_db: Path, version: str) -> None:
    """A server that says it is Prefect 4 (or 2): its filters might not guard a call as
    Prefect 3's do, and it was taken for a bulk (4.x) or per-run (2.x) server. apply sends
    no write and says why; the health and version reads are all it asked."""
    from flowsync.errors import ApiError

    fake = Recorder(accept_all, api_rows(mixed_db))
    fake_version = fake.__call__

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/admin/version"):
            fake.bodies.append(("admin/version", {}))
            return httpx.Response(200, json=version)
        return fake_version(request)

    plan = plan_for(mixed_db, DELETE_ALL)
    refused = rf"Prefect {re.escape(version)}: flowsync applies policies to Prefect 3"
    with (
        Store.sandboxed_writer(mixed_db) as store,
        mock_client(answer) as client,
        pytest.raises(ApiError, match=refused),
    ):
        apply_plan(client, store, plan)
    assert [p for p, _ in fake.bodies] == ["health", "admin/version"]
