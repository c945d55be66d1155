"""Planning: a pure function of the policy and a local DuckDB file (no server needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from flowsync.errors import PolicyError, ReadOnlyError, SandboxError
from flowsync.policy import make_plan, parse_policy
from flowsync.policy.plan import decide_scope, plan_rule
from flowsync.policy.rulesql import check_rules, rule_statement
from flowsync.store import Sandbox, Store, Writer
from tests.helpers import run_cli, scalar
from tests.policy_db import make_db, rid, run


def policy(*rules: str, extra: str = "") -> str:
    return "version: 1\n" + extra + "rules:\n" + "".join(rules)


def rule(name: str, sql: str, action: str = "delete", more: str = "") -> str:
    text = f'  - name: {name}\n    action: {action}\n    sql: "{sql}"\n'
    if action == "set_state":
        text += "    state: {type: CANCELLED}\n"
    return text + "".join(f"    {line}\n" for line in more.splitlines() if line)


def plan_of(db: Path, text: str) -> Any:
    with Store.sandboxed(db, live=True) as store:
        return make_plan(store, parse_policy(text.encode(), "p.yaml"))


OLD_COMPLETED = (
    "SELECT id FROM flow_runs WHERE state_type = 'COMPLETED' AND end_time < now() - INTERVAL 30 DAY"
)


# -- the guards, as a table over plan_rule (pure) -----------------------------------


def row(n: int, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": rid(n),
        "name": f"r{n}",
        "flow_name": "f",
        "deployment_name": "d",
        "state_type": "COMPLETED",
        "state_name": "Completed",
        "tags": [],
        "expected_start_time": None,
        "end_time": None,
        "unknown": False,
        "deleted": False,
        "protected": False,
        "newest_rank": 99,
    }
    return {**base, **over}


GUARDS = [
    ("selected", row(1), None, set(), None),
    ("unknown id", row(1, unknown=True), None, set(), "not in flow_runs"),
    ("deleted locally", row(1, deleted=True), None, set(), "already deleted"),
    ("no state", row(1, state_type=None), None, set(), "no known state"),
    ("protected", row(1, protected=True), None, set(), "protected tag"),
    ("kept newest", row(1, newest_rank=2), "keep_newest: 2", set(), "keep_newest"),
    ("not among newest", row(1, newest_rank=3), "keep_newest: 2", set(), None),
    ("claimed earlier", row(1), None, {rid(1)}, "taken by an earlier rule"),
]


@pytest.mark.parametrize(
    ("r", "more", "claimed", "reason"), [g[1:] for g in GUARDS], ids=[g[0] for g in GUARDS]
)
def test_guards(r: dict[str, Any], more: str | None, claimed: set[str], reason: str | None) -> None:
    loaded = parse_policy(policy(rule("r", "SELECT 1 AS id", more=more or "")).encode(), "p")
    rp = plan_rule(loaded.policy.rules[0], [r], set(claimed))
    if reason is None:
        assert rp.chosen == [r["id"]] and rp.skipped == {}
    else:
        assert rp.chosen == [] and rp.skipped == {reason: 1}


def test_limit_takes_the_first_rows_and_counts_the_rest() -> None:
    loaded = parse_policy(policy(rule("r", "SELECT 1 AS id", more="limit: 2")).encode(), "p")
    claimed: set[str] = set()
    rp = plan_rule(loaded.policy.rules[0], [row(1), row(2), row(3)], claimed)
    assert rp.chosen == [rid(1), rid(2)]
    assert rp.skipped == {"over the rule's limit": 1}
    assert claimed == {rid(1), rid(2)}


# -- over a real file -------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    runs = [run(i, days_ago=31 + i) for i in range(1, 11)]  # 10 old completed in prod
    runs += [run(i, days_ago=31 + i, dep="dev") for i in range(11, 14)]  # 3 in dev
    runs += [run(20, days_ago=5), run(21, tags=["keep", "etl"]), run(22, deleted=True)]
    runs += [
        run(30, state="SCHEDULED", days_ago=10),
        run(31, state="SCHEDULED", days_ago=1),
        run(32, state="FAILED"),
    ]
    return make_db(tmp_path / "runs.duckdb", runs)


def test_plan_selects_oldest_first_and_skips_protected_and_deleted(db: Path) -> None:
    plan = plan_of(db, policy(rule("purge", OLD_COMPLETED), extra="protect_tags: [keep]\n"))
    rp = plan.rules[0]
    runs = rp.sample(None)
    assert rp.planned == len(runs) == 13
    assert rp.skipped == {"protected tag": 1, "already deleted": 1}
    assert runs[0].id == rid(13)  # the oldest (44 days) first
    assert runs[0].flow_name == "etl" and runs[0].deployment_name == "dev"
    assert rid(21) not in {r.id for r in runs}


def test_keep_newest_is_per_deployment(db: Path) -> None:
    plan = plan_of(db, policy(rule("purge", OLD_COMPLETED, more="keep_newest: 2")))
    kept = {rid(1), rid(2), rid(11), rid(12)}  # the two newest selected in prod and in dev
    ids = {r.id for r in plan.rules[0].sample(None)}
    assert not ids & kept
    assert plan.rules[0].skipped["keep_newest"] == 4


def test_keep_newest_ranks_runs_without_a_deployment_within_their_flow(tmp_path: Path) -> None:
    """Runs of no deployment are not one bucket across flows: each flow keeps its newest, in
    the plan and in apply's decision of a batch."""
    import uuid

    from flowsync.policy.plan import Scope

    db = make_db(tmp_path / "runs.duckdb", [run(i, days_ago=31 + i, dep=None) for i in range(1, 5)])
    other = str(uuid.UUID(int=1001))
    with Store.writer(db) as store:
        store.execute("INSERT INTO flows (id, name, synced_at) VALUES (?, 'other', now())", [other])
        store.execute("UPDATE flow_runs SET flow_id = ? WHERE id = ?", [other, rid(4)])
    plan = plan_of(db, policy(rule("purge", OLD_COMPLETED, more="keep_newest: 1")))
    # etl keeps its newest (1); other keeps its only run (4), the oldest of all four
    assert {r.id for r in plan.rules[0].sample(None)} == {rid(2), rid(3)}
    with Store.sandboxed(db, live=True) as store:
        scope = Scope((rid(2), rid(3), rid(4)), (None, None, None))
        decision = decide_scope(store, plan, plan.rules[0].rule, scope)
    assert decision.reasons == {rid(2): None, rid(3): None, rid(4): "keep_newest"}
    assert decision.ranked_above == {rid(1), rid(4)}  # what the decision keeps


@pytest.mark.parametrize("keep", [2**63 - 1, 10**40], ids=["BIGINT's max", "past HUGEINT"])
def test_a_keep_newest_past_what_the_decision_can_count_is_refused_with_the_policy(
    db: Path, keep: int
) -> None:
    """The plan ranks in its own store and kept every run; apply's decision of a later
    rule's batch passes keep_newest to DuckDB (``$keep + 1``), which could not hold it:
    the apply failed after its question ('rule ...: SQL failed: ... too large', 'the id
    column must hold flow-run ids'). Refused when the policy is read instead."""
    text = policy(
        rule("keep-all", OLD_COMPLETED, more=f"keep_newest: {keep}"),
        rule("purge", OLD_COMPLETED),
    )
    with pytest.raises(PolicyError, match=r"rules\[0\]\.keep_newest: .*1000000000"):
        parse_policy(text.encode(), "keep.yaml")


def test_a_keep_newest_of_a_billion_is_decided_as_planned(db: Path) -> None:
    from flowsync.policy.plan import Scope
    from tests.policy_db import DEPLOYMENTS

    text = policy(
        rule("keep-all", OLD_COMPLETED, more="keep_newest: 1000000000"),
        rule("purge", OLD_COMPLETED),
    )
    plan = plan_of(db, text)
    assert plan.rules[0].planned == 0 and plan.rules[1].planned > 0
    picked = plan.rules[1].sample(None)[0].id
    with Store.sandboxed(db, live=True) as store:
        scope = Scope((picked,), tuple(DEPLOYMENTS.values()))
        decision = decide_scope(store, plan, plan.rules[1].rule, scope)
    assert decision.reasons == {picked: None}


def test_first_rule_wins_and_disabled_rules_select_nothing(db: Path) -> None:
    text = policy(
        rule("cancel", "SELECT id FROM flow_runs WHERE state_type = 'SCHEDULED'", "set_state"),
        rule("everything", "SELECT id FROM flow_runs"),
        rule("switched-off", "SELECT id FROM flow_runs", more="enabled: false"),
    )
    plan = plan_of(db, text)
    assert plan.rules[0].planned == len(plan.rules[0].sample(None)) == 2
    assert plan.rules[1].skipped["taken by an earlier rule"] == 2
    assert (
        plan.rules[2].planned == 0
        and plan.rules[2].sample(None) == []
        and plan.rules[2].selected == 0
    )
    assert plan.total == plan.rules[0].planned + plan.rules[1].planned


def test_the_plans_sample_keeps_every_name_whole_in_a_log(db: Path) -> None:
    """Not a terminal (cron, CI: 80 columns): a line a run, the long name, its deployment and
    its age whole (a table cut them to `quartz-ten…  nightly-backup/sta…  18…`)."""
    import duckdb

    long_name = "quartz-tenacious-nightly-backup-of-the-warehouse-" + "x" * 40
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE flow_runs SET name = ? WHERE id = ?", [long_name, rid(13)])
    path = _write(db.parent, policy(rule("purge", OLD_COMPLETED)))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe: Rich's 80 columns
    result = subprocess.run(
        [sys.executable, "-m", "flowsync", "plan", str(path), "--db", str(db), "--live"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if long_name in x)
    assert "etl/dev" in line and "44d" in line and "…" not in line


def test_max_actions_is_flagged(db: Path) -> None:
    plan = plan_of(db, policy(rule("purge", OLD_COMPLETED), extra="max_actions: 5\n"))
    assert plan.total == 14 and plan.over_max
    result = run_cli(
        "plan",
        str(_write(db.parent, policy(rule("purge", OLD_COMPLETED), extra="max_actions: 5\n"))),
        "--db",
        str(db),
    )
    # CI can gate on it: the code apply would refuse with (max_actions), after the plan.
    assert result.exit_code == 8
    assert "apply would refuse" in result.stdout


def test_a_rule_apply_would_refuse_on_the_server_as_last_pulled_is_flagged(db: Path) -> None:
    """The last pull saw a server before 3.6.16: apply refuses a rule that forces a state
    there (no state to guard it by, per run). plan says so, naming the rule, and exits with
    apply's code, as it does over max_actions."""
    from flowsync.store import sync_log

    with Store.writer(db) as store, store.transaction():
        sync_log.set_state(store, "server", {"version": "3.4.25", "cloud": False, "bulk": False})
    forced = policy(rule("cancel", OLD_COMPLETED, "set_state", "force: true"))
    result = run_cli("plan", str(_write(db.parent, forced)), "--db", str(db), "--exit-code")
    assert result.exit_code == 7, result.output
    assert "apply would refuse: rule 'cancel' forces a state" in result.stdout
    assert "forced states are refused" in result.stdout and "DELETE" not in result.stdout
    shown = run_cli("plan", str(_write(db.parent, forced)), "--db", str(db), "--json")
    assert shown.exit_code == 7 and json.loads(shown.stdout)["refused_forced_rules"] == ["cancel"]
    unforced = policy(rule("cancel", OLD_COMPLETED, "set_state"))
    result = run_cli("plan", str(_write(db.parent, unforced)), "--db", str(db), "--exit-code")
    assert result.exit_code == 10, result.output
    assert "apply path: per-run" in result.stdout and "would refuse" not in result.stdout
    assert "DELETE" not in result.stdout  # a set_state policy: no DELETE to warn of
    # but its set_state cannot name the state it expects either (RUNNING -> CANCELLED passes)
    said = " ".join(result.stdout.split())
    assert "POST /flow_runs/{id}/set_state has no server-side state guard" in said, said


def test_plan_exit_code_says_whether_apply_would_change_anything(db: Path) -> None:
    changes = _write(db.parent, policy(rule("purge", OLD_COMPLETED)))
    assert run_cli("plan", str(changes), "--db", str(db)).exit_code == 0
    assert run_cli("plan", str(changes), "--db", str(db), "--exit-code").exit_code == 10
    nothing = db.parent / "nothing.yaml"
    nothing.write_text(policy(rule("none", "SELECT id FROM flow_runs WHERE false")))
    assert run_cli("plan", str(nothing), "--db", str(db), "--exit-code").exit_code == 0


def test_duplicate_ids_and_uuid_strings_are_fine(db: Path) -> None:
    sql = f"SELECT '{rid(30)}' AS id UNION ALL SELECT '{rid(30)}' UNION ALL SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE state_type = 'FAILED'"
    plan = plan_of(db, policy(rule("r", sql)))
    assert sorted(r.id for r in plan.rules[0].sample(None)) == sorted([rid(30), rid(32)])


BAD_SQL = [
    ("two statements", "SELECT id FROM flow_runs; SELECT id FROM flow_runs", "holds 2 statements"),
    ("a delete", "DELETE FROM flow_runs", "is a DELETE statement"),
    ("select then delete", "SELECT id FROM flow_runs; DELETE FROM flow_runs", "holds 2 statements"),
    ("update", "UPDATE flow_runs SET name = 'x'", "is a UPDATE statement"),
    ("attach", "ATTACH 'x.duckdb' AS x", "is a ATTACH statement"),
    ("copy", "COPY flow_runs TO 'out.csv'", "is a COPY statement"),
    ("no id column", "SELECT name FROM flow_runs", "not an `id` column"),
    ("unknown table", "SELECT id FROM nope", "SQL failed"),
    ("syntax", "SELEC id FROM flow_runs", "does not parse"),
    ("ids not uuids", "SELECT name AS id FROM flow_runs", "SQL failed"),
    # Only functions that compute: files, network, sequences, SQL text, randomness, sleeps are
    # refused by name before anything runs (and external access is off besides).
    (
        "read a file",
        "SELECT 'x' || content AS id FROM read_text('/etc/hostname')",
        "sql calls read_text, which rule SQL may not use",
    ),
    (
        "read a csv",
        "SELECT column0 AS id FROM read_csv('/etc/passwd')",
        "sql calls read_csv, which rule SQL may not use",
    ),
    ("glob", "SELECT file AS id FROM glob('/etc/*')", "sql calls glob, which"),
    (
        "network",
        "SELECT id FROM read_csv('http://127.0.0.1:9/x.csv')",
        "sql calls read_csv, which",
    ),
    (
        "in a subquery",
        "SELECT id FROM flow_runs WHERE name IN (SELECT content FROM read_blob('/etc/hostname'))",
        "sql calls read_blob, which",
    ),
    (
        "settings",
        "SELECT id FROM flow_runs WHERE current_setting('enable_external_access') AND (SELECT count(*) FROM read_text('/etc/hosts')) > 0",
        "sql calls read_text, which",
    ),
    (
        "sequence",
        "SELECT id FROM flow_runs WHERE setval('policy_actions_id', 1) > 0",
        "sql calls setval, which",
    ),
    ("nextval", "SELECT id FROM flow_runs WHERE nextval('policy_actions_id') > 0", "nextval"),
    (
        "sql text",
        "SELECT * FROM query('SELECT id FROM flow_runs')",
        "sql calls query, which",
    ),
    (
        "serialized sql",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT setval(''policy_actions_id'', 1) AS id'))",
        "json_execute_serialized_sql",
    ),
    ("query_table", "SELECT id FROM query_table('flow_runs')", "sql calls query_table, which"),
    ("random", "SELECT id FROM flow_runs WHERE random() < 0.5", "sql calls random, which"),
    ("sleep", "SELECT id FROM flow_runs WHERE pg_sleep(1) IS NULL", "pg_sleep"),
    ("checkpoint", "SELECT * FROM checkpoint()", "sql calls checkpoint, which"),
]
# Two columns named id: DuckDB keeps the first as `id` and renames the next `id_1`, and the
# first was taken (the flow ids here; a join's `SELECT *` holds the other table's id too).
BAD_SQL += [
    (f"second id column {n}", sql, "`id_1`, DuckDB's name for another column called id")
    for n, sql in enumerate(
        [
            "SELECT flow_id AS id, id FROM flow_runs",
            "SELECT * FROM flow_runs r JOIN deployments d ON d.id = r.deployment_id",
            "WITH a AS (SELECT flow_id AS id, id FROM flow_runs) SELECT * FROM a",
        ]
    )
]


def _write(folder: Path, text: str) -> Path:
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("sql", "expected"), [b[1:] for b in BAD_SQL], ids=[b[0] for b in BAD_SQL])
def test_bad_sql_is_refused_and_changes_nothing(db: Path, sql: str, expected: str) -> None:
    before = scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL")
    with pytest.raises(PolicyError, match="rule 'bad'") as info:
        plan_of(db, policy(rule("good", OLD_COMPLETED), rule("bad", sql)))
    assert expected in str(info.value)
    path = _write(db.parent, policy(rule("bad", sql)))
    for args in (["plan", str(path)], ["policy", "check", str(path)]):
        result = run_cli(*args, "--db", str(db))
        assert result.exit_code == 7, result.output
        assert expected in result.stderr and "Traceback" not in result.output
    assert scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL") == before
    # `policy check` in CI, with no file: the same refusal, but for ids only data can show
    result = run_cli("policy", "check", str(path))
    if sql == "SELECT name AS id FROM flow_runs":  # no rows, no value to cast
        assert result.exit_code == 0, result.output
        assert "SQL ok on an empty file (--db runs it on data)" in result.stdout
    else:
        assert result.exit_code == 7, result.output
        assert expected in result.stderr and "Traceback" not in result.output


def test_rule_sql_has_a_time_limit(db: Path) -> None:
    forever = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT printf('00000000-0000-0000-0000-%012d', n) AS id FROM t"
    path = _write(db.parent, policy(rule("forever", forever), extra="rule_timeout_seconds: 1\n"))
    for args in (["plan", str(path)], ["policy", "check", str(path)]):
        result = run_cli(*args, "--db", str(db))
        assert result.exit_code == 7, result.output
        assert "rule 'forever': its SQL ran longer than 1s" in result.stderr
        assert "Traceback" not in result.output
    # The flag replaces the policy's limit.
    slow = _write(db.parent, policy(rule("forever", forever)))
    result = run_cli("plan", str(slow), "--db", str(db), "--rule-timeout", "0.5")
    assert result.exit_code == 7 and "longer than 0.5s" in result.stderr


def test_rules_reading_other_runs_are_told_apart(db: Path) -> None:
    from flowsync.policy.rulesql import reads_other_runs

    own_row = [
        "SELECT id FROM flow_runs WHERE state_type = 'FAILED' AND end_time < now() - INTERVAL 1 DAY",
        "SELECT r.id FROM flow_runs r JOIN deployments d ON d.id = r.deployment_id WHERE d.name = 'x'",
        "SELECT id FROM flow_runs_enriched WHERE flow_name LIKE 'etl%' AND list_contains(tags, 'a')",
        "SELECT DISTINCT id FROM flow_runs WHERE state_type = 'FAILED' ORDER BY end_time",
    ]
    other_runs = [
        "SELECT id FROM flow_runs r WHERE NOT EXISTS (SELECT 1 FROM flow_runs n WHERE n.deployment_id = r.deployment_id AND n.state_type = 'COMPLETED')",
        "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY deployment_id ORDER BY created DESC) AS k FROM flow_runs) WHERE k > 3",
        "SELECT r.id FROM flow_runs r JOIN flow_runs p ON p.id = r.parent_task_run_id",
        "WITH f AS (SELECT id FROM flow_runs) SELECT id FROM f",
        "SELECT any_value(id) AS id FROM flow_runs GROUP BY deployment_id",
        "SELECT id FROM flow_runs WHERE deployment_id IN (SELECT deployment_id FROM failure_rates_by_deployment)",
        # A run kept or dropped by its place among the others: the oldest 40, all but the
        # first 10, one per deployment, a sample.
        "SELECT id FROM flow_runs WHERE state_type = 'FAILED' ORDER BY end_time LIMIT 40",
        "SELECT id FROM flow_runs ORDER BY created OFFSET 10",
        "SELECT DISTINCT ON (deployment_id) id FROM flow_runs ORDER BY deployment_id, created",
        "SELECT id FROM flow_runs USING SAMPLE 10 ROWS (reservoir, 7)",
        # Every run read through an aggregate that is also a table macro (histogram), or
        # through one of DuckDB's own macros whose body is an aggregate (json_group_array is
        # string_agg, variant_group_array list, weighted_avg sum, geomean avg): read as own
        # rows before, so apply skipped the catch-up and acted on what the server no longer
        # selected.
        "SELECT unnest(map_keys(histogram(id))) AS id FROM flow_runs",
        "SELECT unnest(CAST(json_group_array(id) AS VARCHAR[])) AS id FROM flow_runs",
        "SELECT unnest(CAST(variant_group_array(id) AS VARCHAR[])) AS id FROM flow_runs",
        "SELECT CAST(weighted_avg(run_count, 1) AS VARCHAR) AS id FROM flow_runs",
        "SELECT CAST(geomean(run_count) AS VARCHAR) AS id FROM flow_runs",
    ]
    with Store.sandboxed(db, live=True) as store:
        assert [reads_other_runs(store, sql) for sql in own_row] == [None] * len(own_row)
        assert [sql for sql in other_runs if not reads_other_runs(store, sql)] == []


def test_rules_that_may_read_flows_or_deployments_are_told_apart(db: Path) -> None:
    """apply re-reads a batch's flows and deployments only for these (their edits emit no
    event): every reference to them, and every view or table macro that may join them."""
    from flowsync.policy.rulesql import reads_lookups

    runs_only = [
        "SELECT id FROM flow_runs WHERE state_type = 'FAILED'",
        "SELECT id FROM flow_run_measures WHERE duration_s > 60",
        "SELECT r.id FROM flow_runs r WHERE NOT EXISTS (SELECT 1 FROM flow_runs o WHERE o.id = r.id)",
    ]
    both = {"flows", "deployments"}
    lookups = {
        "SELECT r.id FROM flow_runs r JOIN deployments d ON d.id = r.deployment_id WHERE d.paused": {
            "deployments"
        },
        "SELECT id FROM flow_runs WHERE flow_id IN (SELECT id FROM flows WHERE name = 'x')": {
            "flows"
        },
        "SELECT id FROM flow_runs_enriched WHERE deployment_name = 'nightly'": both,
        "SELECT id FROM flow_runs WHERE deployment_id IN (SELECT deployment_id FROM failure_rates_by_deployment)": both,
        "SELECT r.id FROM flow_runs r JOIN failure_rates('deployment', now() - INTERVAL 1 DAY, now(), "
        "now() - INTERVAL 1 DAY, false) f ON f.deployment_id = r.deployment_id": both,
        # a CTE's name reads as a table it cannot tell apart from a view: both, to be safe
        "WITH d AS (SELECT * FROM deployments) SELECT r.id FROM flow_runs r, d WHERE d.id = r.deployment_id": both,
    }
    with Store.sandboxed(db, live=True) as store:
        assert [reads_lookups(store, sql) for sql in runs_only] == [frozenset()] * len(runs_only)
        assert {sql: reads_lookups(store, sql) for sql in lookups} == lookups


def test_rule_sql_needs_a_sandbox_and_says_so_in_its_signature(db: Path) -> None:
    # The type is the check: every function that runs rule SQL takes a Sandbox, which only
    # Store.sandboxed and Store.sandboxed_writer return (mypy holds every caller to it).
    for runs_rule_sql in (make_plan, decide_scope, check_rules, rule_statement):
        assert typing.get_type_hints(runs_rule_sql)["store"] is Sandbox, runs_rule_sql
    with Store.reader(db, live=True) as reader:
        assert not isinstance(reader, Sandbox)
    with Store.sandboxed(db, live=True) as sandbox:
        assert isinstance(sandbox, Sandbox)
        # and the sandbox cannot be switched off from inside
        with pytest.raises(SandboxError, match="locked"):
            sandbox.execute("SET enable_external_access = true")
        with pytest.raises(SandboxError, match="locked"):
            sandbox.select("SET enable_external_access = true", timeout=None)
        with pytest.raises(ReadOnlyError):  # what it runs changes nothing
            sandbox.select("DELETE FROM flow_runs", timeout=None)


def test_apply_writer_is_a_sandbox_whose_rule_sql_changes_nothing(db: Path) -> None:
    with Store.sandboxed_writer(db) as store:
        assert isinstance(store, Sandbox) and isinstance(store, Writer)
        before = store.execute("SELECT count(*) FROM flow_runs").scalar()
        assert store.select("DELETE FROM flow_runs RETURNING id", timeout=None)[1]
        assert store.execute("SELECT count(*) FROM flow_runs").scalar() == before > 0
        with pytest.raises(SandboxError, match="locked"):
            store.execute("SET enable_external_access = true")
        store.execute("INSERT INTO sync_state VALUES ('k', '1', now())")  # it still writes


def test_rule_sql_runs_read_only(db: Path) -> None:
    # A SELECT cannot write, and the connection could not anyway: prove the second.
    with Store.reader(db, live=True) as store, pytest.raises(ReadOnlyError, match="read-only"):
        store.execute("DELETE FROM flow_runs")


def test_plan_cli_json(db: Path) -> None:
    path = _write(db.parent, policy(rule("purge", OLD_COMPLETED, more="limit: 3")))
    result = run_cli("plan", str(path), "--db", str(db), "--json", "--sample", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"] == 3 and data["over_max_actions"] is False
    r0 = data["rules"][0]
    assert (
        r0["rule"] == "purge" and r0["runs"] == 3 and len(r0["ids"]) == 3 and len(r0["sample"]) == 2
    )
    assert r0["sample"][0]["deployment"] in ("prod", "dev") and r0["by_state"] == {"COMPLETED": 3}
    assert r0["skipped"] == {"already deleted": 1, "over the rule's limit": 11}


def test_plan_cli_human(db: Path) -> None:
    path = _write(db.parent, policy(rule("purge", OLD_COMPLETED), extra="protect_tags: [keep]\n"))
    result = run_cli("plan", str(path), "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "purge (delete): 13 runs (13 COMPLETED)" in result.stdout
    assert (
        "1 protected tag" in result.stdout and "etl/dev" in result.stdout and "44d" in result.stdout
    )
    assert "total: 13 runs" in result.stdout


def test_check_with_db_counts_rows(db: Path) -> None:
    path = _write(db.parent, policy(rule("purge", OLD_COMPLETED)))
    result = run_cli("policy", "check", str(path), "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_by_rule"] == {"purge": 15}


def test_plan_without_db_file(tmp_path: Path) -> None:
    path = _write(tmp_path, policy(rule("purge", OLD_COMPLETED)))
    result = run_cli("plan", str(path), "--db", str(tmp_path / "none.duckdb"))
    assert result.exit_code == 5 and "flowsync pull" in result.stderr


def test_the_cli_plan_is_one_call_into_the_library(db: Path) -> None:
    import json

    import flowsync

    path = _write(db.parent, policy(rule("purge", OLD_COMPLETED, more="keep_newest: 1")))
    result = run_cli("plan", str(path), "--db", str(db), "--json", "--sample", "100")
    assert result.exit_code == 0, result.output
    from_cli = json.loads(result.stdout)
    from flowsync.cli.common import to_jsonable

    from_library = json.loads(json.dumps(to_jsonable(flowsync.plan(db, path).to_json(sample=100))))
    for data in (from_cli, from_library):
        data.pop("generated_at")
    assert from_cli == from_library
    assert from_cli["total"] > 0


# -- the plan's runs: in a store of the plan's own, read a page at a time ----------------


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """310 runs over both deployments and three states, oldest first by their number."""
    states = ["COMPLETED", "FAILED", "CANCELLED"]
    runs = [
        run(i, state=states[i % 3], days_ago=400 - i, dep="prod" if i % 2 else "dev")
        for i in range(1, 301)
    ]
    runs += [run(i, tags=["keep"], days_ago=500) for i in range(301, 311)]
    return make_db(tmp_path / "many.duckdb", runs)


MANY = policy(
    rule(
        "failed",
        "SELECT id FROM flow_runs WHERE state_type = 'FAILED'",
        more="limit: 40",
    ),
    rule("rest", "SELECT id FROM flow_runs"),
    extra="protect_tags: [keep]\n",
)


def test_batches_yield_every_planned_run_once_in_rank_order_across_pages(
    many: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowsync.policy import plan as plan_module
    from flowsync.policy import planned
    from flowsync.policy.apply import batches

    whole = plan_of(many, MANY)  # one page: what the plan is
    expected = [[r.id for r in rp.sample(None)] for rp in whole.rules]
    states = [[r.state_type for r in rp.sample(None)] for rp in whole.rules]
    # pages far smaller than the rules' selections: every page boundary is crossed
    monkeypatch.setattr(plan_module, "LIST_PAGE", 7)
    monkeypatch.setattr(planned, "PAGE", 5)
    plan = plan_of(many, MANY)
    assert [rp.planned for rp in plan.rules] == [40, 260] == [len(e) for e in expected]
    assert plan.rules[0].skipped == {"over the rule's limit": 60}
    assert plan.rules[1].skipped == {"protected tag": 10, "taken by an earlier rule": 40}
    assert [[r.id for r in rp.sample(None)] for rp in plan.rules] == expected
    assert [[i for page in rp.ids() for i in page] for rp in plan.rules] == expected

    sent = [(b.rule.name, b.state_type, b.ids) for b in batches(plan, 3)]
    assert all(1 <= len(ids) <= 3 for _, _, ids in sent)
    ids = [i for _, _, chunk in sent for i in chunk]
    assert len(ids) == len(set(ids)) == plan.total == 300  # each planned run exactly once
    for number, rp in enumerate(plan.rules):
        mine = [(state, chunk) for name, state, chunk in sent if name == rp.rule.name]
        # per state type (in the order the ranking meets them), the runs in rank order
        order = list(dict.fromkeys(states[number]))
        assert list(dict.fromkeys(state for state, _ in mine)) == order
        for state in order:
            got = [i for s, chunk in mine if s == state for i in chunk]
            assert got == [i for i, s in zip(expected[number], states[number]) if s == state]
    deployment = {r.id: r.deployment_id for rp in whole.rules for r in rp.sample(None)}
    assert all(b.deployments == {i: deployment[i] for i in b.ids} for b in batches(plan, 3))


def test_the_sample_is_bounded_and_the_plan_holds_no_runs_in_memory(many: Path) -> None:
    plan = plan_of(many, MANY)
    rp = plan.rules[1]
    assert [r.id for r in rp.sample(3)] == [r.id for r in rp.sample(None)][:3]
    assert rp.sample(0) == [] and len(rp.sample(10_000)) == rp.planned
    # what the plan keeps in Python: counts, not runs
    held = json.dumps(plan.to_json(sample=2, ids=False), default=str)
    assert rid(150) not in held and rid(299) not in held  # planned, not in the sample
    assert len(plan.to_json(sample=2)["rules"][1]["ids"]) == rp.planned


def test_the_plan_store_is_its_own_file_and_goes_with_close(many: Path) -> None:
    before = many.read_bytes()
    plan = plan_of(many, MANY)
    assert plan.runs_store is not None
    folder = plan.runs_store.folder
    assert folder.is_dir() and folder != many.parent
    plan.close()
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="closed"):
        plan.rules[0].sample(1)
    assert many.read_bytes() == before  # the user's file: not a byte written


def test_a_plan_folder_left_by_a_killed_process_goes_with_the_next_plan(
    many: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 leaves a plan's scratch folder behind; the next plan removes it, and only it."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan, live, unknown = (tmp_path / f"flowsync-plan-{n}" for n in ("orphan", "live", "old"))
    for folder in (orphan, live, unknown):
        folder.mkdir()
        (folder / "plan.duckdb").write_bytes(b"x" * 1024)
    (orphan / "owner.pid").write_text(gone.stdout.strip())  # that process has exited
    (live / "owner.pid").write_text(str(os.getppid()))
    with plan_of(many, MANY) as plan:
        assert plan.runs_store is not None and plan.runs_store.folder.parent == tmp_path
        assert not orphan.exists()
        assert live.exists() and unknown.exists()
        own = plan.runs_store.folder
        assert (own / "owner.pid").read_text() == str(os.getpid())
    assert not own.exists()


def test_plan_json_streams_the_ids_as_print_json_would_write_them(
    many: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowsync.cli.common import print_json
    from flowsync.cli.policy_cmds import _print_plan_json
    from flowsync.policy import planned

    monkeypatch.setattr(planned, "PAGE", 7)
    text = MANY + rule("none", "SELECT id FROM flow_runs WHERE false")
    plan = plan_of(many, text)
    for wrap in (None, "plan"):
        print_json(
            plan.to_json(sample=4) if wrap is None else {wrap: plan.to_json(sample=4), "result": 1}
        )
        old = capsys.readouterr().out
        _print_plan_json(plan, 4, wrap, **({"result": 1} if wrap else {}))
        assert capsys.readouterr().out == old
        assert json.loads(old)  # and it is JSON


def test_a_plan_of_many_runs_crosses_the_real_page_sizes(tmp_path: Path) -> None:
    """56,000 runs planned: two listing pages and six store pages, as `plan` and apply read them."""
    from flowsync import operations
    from flowsync.policy import plan as plan_module
    from flowsync.policy import planned
    from flowsync.policy.apply import batches
    from harness.history import make_history, run_id

    runs = 70_000
    assert runs * 0.8 > plan_module.LIST_PAGE and runs * 0.8 > 5 * planned.PAGE
    db = make_history(tmp_path / "history.duckdb", runs)
    policy_file = _write(
        tmp_path,
        policy(
            rule("done", "SELECT id FROM flow_runs WHERE state_type = 'COMPLETED'"),
            extra="max_actions: 1000000\n",
        ),
    )
    with operations.plan(db, policy_file, live=True) as plan:
        expected = [run_id(i) for i in range(runs) if i % 10 >= 2]  # oldest (lowest i) first
        assert plan.total == plan.rules[0].planned == len(expected) == 56_000
        assert [r.id for r in plan.rules[0].sample(3)] == expected[:3]
        sent = [i for batch in batches(plan) for i in batch.ids]
        assert sent == expected


# Rules that rank or cut runs in their own SQL: a batch's decision must see what the rule
# sees over the whole file, never the rule re-run over the batch's 50 runs alone (a filter
# pushed below a window function, a LIMIT or an aggregate would pick other runs).
RANKING_SQL = {
    "window": "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY deployment_id ORDER BY created DESC) AS k FROM flow_runs) WHERE k > 3",
    "limit": "SELECT id FROM flow_runs ORDER BY created LIMIT 40",
    "qualify": "SELECT id FROM flow_runs QUALIFY row_number() OVER (ORDER BY created) % 7 = 0",
    "aggregate": "SELECT max(id) AS id FROM flow_runs GROUP BY state_type",
}


@pytest.mark.parametrize("sql", list(RANKING_SQL.values()), ids=list(RANKING_SQL))
def test_a_batch_decision_picks_what_the_rule_picks_over_the_whole_file(
    many: Path, sql: str
) -> None:
    from flowsync.policy.plan import Scope

    confirmed = plan_of(many, policy(rule("ranked", sql)))
    picks = {i for page in confirmed.rules[0].ids() for i in page}
    assert 0 < len(picks) < 310
    everyone = [rid(i) for i in range(1, 311)]
    chosen: set[str] = set()
    with Store.sandboxed(many, live=True) as store:
        for start in range(0, len(everyone), 50):  # the batches apply would decide
            scope = Scope(tuple(everyone[start : start + 50]))
            reasons = decide_scope(store, confirmed, confirmed.rules[0].rule, scope).reasons
            chosen |= {i for i, why in reasons.items() if why is None}
    assert chosen == picks


def test_a_decision_on_the_runs_just_read_is_the_decision_on_the_file(tmp_path: Path) -> None:
    """apply decides an unranked batch from the rows its re-read returned (staged as the
    file holds them), not from the file's rows found by id: once the re-read has written
    them, both must give every run the same reason, through earlier rules, protected
    tags and rule SQL over joined tables."""
    import copy

    from flowsync.api import Page
    from flowsync.policy.plan import Scope
    from flowsync.store import synced_tables
    from flowsync.store.tables import FLOW_RUNS
    from harness.history import changed_run, make_history, run_id

    db = make_history(tmp_path / "h.duckdb", 400)
    read: list[dict[str, Any]] = []
    for i in range(100, 160):
        run = copy.deepcopy(changed_run(i))
        run["state_type"] = run["state"]["type"] = ("COMPLETED", "FAILED", "CANCELLED")[i % 3]
        run["tags"] = ["keep"] if i % 7 == 0 else ["prod"] if i % 2 else []
        run["end_time"] = None if i % 11 == 0 else run["end_time"]
        read.append(run)
    with Store.writer(db) as store, store.transaction():  # what the re-read wrote
        synced_tables.upsert_pages(store, FLOW_RUNS, [Page.from_rows(read)], pull_id=2)
    text = policy(
        rule("failed", "SELECT id FROM flow_runs WHERE state_type = 'FAILED' AND run_count > 1"),
        rule(
            "done",
            "SELECT r.id FROM flow_runs r LEFT JOIN flows f ON f.id = r.flow_id "
            "WHERE r.state_type IN ('COMPLETED', 'FAILED') AND r.end_time IS NOT NULL "
            "AND f.id IS NULL",
        ),
        extra="protect_tags: [keep]\n",
    )
    confirmed = plan_of(db, text)
    later = confirmed.policy.policy.rules[1]
    ids = (*[r["id"] for r in read], run_id(3))  # the last: one the re-read did not return
    with Store.sandboxed_writer(db) as store:
        from_file = decide_scope(store, confirmed, later, Scope(ids)).reasons
        from_read = decide_scope(store, confirmed, later, Scope(ids), read).reasons
    assert set(from_file.values()) >= {None, "protected tag", "taken by an earlier rule"}
    assert {i: from_read[i] for i in ids[:-1]} == {i: from_file[i] for i in ids[:-1]}
    assert from_read[ids[-1]] is not None  # not read: never sent


def test_a_macro_of_the_users_that_reads_tables_counts_as_reading_other_rows(db: Path) -> None:
    """A scalar macro added to the file can read any table: a rule calling one is decided like
    a rule reading other runs, flows and deployments (never ahead, with the catch-up)."""
    from flowsync.policy.rulesql import reads_lookups, reads_other_runs

    with Store.writer(db) as store:
        store.execute(
            "CREATE MACRO dep_paused(x) AS (SELECT any_value(paused) FROM deployments WHERE id = x)"
        )
        store.execute("CREATE MACRO twice(x) AS x * 2")
        store.execute("CREATE MACRO on_hold(x) AS coalesce(dep_paused(x), false)")  # nested
    reading = "SELECT id FROM flow_runs WHERE dep_paused(deployment_id)"
    nested = "SELECT id FROM flow_runs WHERE on_hold(deployment_id)"
    computing = "SELECT id FROM flow_runs WHERE twice(run_count) > 2 AND signature_of(name) <> ''"
    with Store.sandboxed(db, live=True) as store:
        assert reads_other_runs(store, reading) == "a macro that reads tables (dep_paused)"
        assert reads_lookups(store, reading) == {"flows", "deployments"}
        assert reads_other_runs(store, nested) == "a macro that reads tables (on_hold)"
        assert reads_lookups(store, nested) == {"flows", "deployments"}
        assert reads_other_runs(store, computing) is None
        assert reads_lookups(store, computing) == frozenset()


@pytest.mark.parametrize(
    ("macro", "called"),
    [
        ("CREATE MACRO coin() AS random() < 0.5", "random"),
        ("CREATE MACRO toss() AS coin_of(uuid())", "uuid"),
        ("CREATE MACRO half() AS TABLE SELECT id FROM flow_runs WHERE random() < 0.5", "random"),
    ],
    ids=["scalar", "nested", "table"],
)
def test_a_macro_of_the_users_is_held_to_the_functions_rule_sql_may_call(
    db: Path, macro: str, called: str
) -> None:
    """Rule SQL may not call random(): the plan would list runs apply then decides again by
    another draw, each batch its own (the plan shows 10, apply acts on some of them). A
    macro the file holds is allowed only if every function it calls is, however deep:
    `coin()` wrapping random() is refused as random() is, before anything runs."""
    with Store.writer(db) as store:
        store.execute("CREATE MACRO coin_of(x) AS hash(x) % 2 = 0")  # computes: allowed
        store.execute(macro)
    name = macro.split()[2].split("(")[0]
    sql = (
        f"SELECT id FROM {name}()"
        if "TABLE" in macro
        else f"SELECT id FROM flow_runs WHERE {name}()"
    )
    with pytest.raises(PolicyError) as info:
        plan_of(db, policy(rule("drawn", sql)))
    assert f"sql calls {name}, which rule SQL may not use" in str(info.value)
    # a macro that only computes is still allowed
    assert plan_of(db, policy(rule("fine", "SELECT id FROM flow_runs WHERE coin_of(id)"))).total
