"""What a policy would do: a pure function of the policy and the local DuckDB file.

Owns: checking each rule's SQL (one SELECT with an ``id`` column), running it,
and turning its rows into the runs each rule would touch after the policy's
guards (locally deleted, no known state, protected tags, keep_newest, claimed
by an earlier rule, per-rule limit), with the reason for every run a guard
skipped. ``recheck`` is the same decision for a few runs of a confirmed plan,
as apply asks it right before each call. Must not: call the API, write to the
store, or print.

Rule SQL runs only on a sandboxed ``Store`` (files, network and extensions off,
settings locked), must be a single SELECT statement, and may not call the few
functions that change state or run SQL text (``setval``, ``nextval``,
``query``, ``query_table``). On a read-only store DuckDB refuses writes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flowsync.errors import PolicyError, QueryError, SandboxError, StoreError
from flowsync.policy.model import DeleteRule, LoadedPolicy, SetStateRule
from flowsync.store import Store, sync_log, synced_tables

RuleModel = DeleteRule | SetStateRule


@dataclass(frozen=True)
class PlannedRun:
    """A run a rule would act on, as last pulled."""

    id: str
    name: str | None
    flow_name: str | None
    deployment_name: str | None
    state_type: str
    state_name: str | None
    tags: tuple[str, ...]
    expected_start_time: datetime | None
    end_time: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "flow": self.flow_name,
            "deployment": self.deployment_name,
            "state_type": self.state_type,
            "state_name": self.state_name,
            "tags": list(self.tags),
            "expected_start_time": self.expected_start_time,
            "end_time": self.end_time,
        }


@dataclass
class RulePlan:
    """One rule's selection, and why each run its SQL returned but a guard stopped was skipped."""

    rule: RuleModel
    runs: list[PlannedRun] = field(default_factory=list)
    selected: int = 0  # distinct ids the SQL returned
    reasons: dict[str, str] = field(default_factory=dict)  # skipped run id -> reason

    def skip(self, run_id: str, reason: str) -> None:
        self.reasons[run_id] = reason

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> runs skipped for it."""
        counts: dict[str, int] = {}
        for reason in self.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def to_json(self, sample: int | None = None) -> dict[str, Any]:
        runs = self.runs if sample is None else self.runs[:sample]
        out: dict[str, Any] = {
            "rule": self.rule.name,
            "action": self.rule.action,
            "enabled": self.rule.enabled,
            "runs": len(self.runs),
            "selected_by_sql": self.selected,
            "skipped": self.skipped,
            "by_state": by_state(self.runs),
            "ids": [r.id for r in self.runs],
            "sample": [r.to_json() for r in runs],
        }
        if isinstance(self.rule, SetStateRule):
            out["state"] = self.rule.state.to_api()
            out["force"] = self.rule.force
        return out


@dataclass
class Plan:
    policy: LoadedPolicy
    rules: list[RulePlan]
    generated_at: datetime
    last_pull_at: datetime | None = None  # the data planned on: last successful pull
    oldest_read_at: datetime | None = None  # ... and the oldest read of a planned run
    refreshed: int | None = None  # runs re-read from the server before planning (plan --refresh)
    statements: dict[str, str] = field(default_factory=dict)  # rule name -> its checked SQL

    @property
    def total(self) -> int:
        return sum(len(r.runs) for r in self.rules)

    @property
    def over_max(self) -> bool:
        return self.total > self.policy.policy.max_actions

    def to_json(self, sample: int | None = 10) -> dict[str, Any]:
        return {
            "policy": self.policy.source,
            "policy_sha256": self.policy.sha256,
            "generated_at": self.generated_at,
            "total": self.total,
            "max_actions": self.policy.policy.max_actions,
            "over_max_actions": self.over_max,
            "data": {
                "last_pull_at": self.last_pull_at,
                "oldest_read_at": self.oldest_read_at,
                "refreshed": self.refreshed,
            },
            "rules": [r.to_json(sample) for r in self.rules],
        }


def by_state(runs: list[PlannedRun]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state_type] = counts.get(run.state_type, 0) + 1
    return counts


# -- rule SQL -------------------------------------------------------------------


# Functions that change state (sequences) or run SQL text built at run time.
FORBIDDEN_FUNCTIONS = frozenset({"nextval", "setval", "query", "query_table"})


def _sandbox_error(rule: RuleModel, e: SandboxError) -> PolicyError:
    return PolicyError(
        f"rule {rule.name!r} tried to reach outside the history ({e.detail}): rule SQL runs with files, "
        "network and extensions off; query only the tables and views of the file."
    )


def _rule_rows(
    store: Store,
    rule: RuleModel,
    sql: str,
    params: list[Any] | None = None,
    hint: str = "The id column must hold flow-run ids (UUIDs).",
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run SQL built around a rule's statement; every failure is a PolicyError naming the rule."""
    try:
        return store.execute(sql, params).dicts()
    except SandboxError as e:
        raise _sandbox_error(rule, e) from e
    except QueryError as e:
        raise PolicyError(f"rule {rule.name!r}: SQL failed: {e.detail}. {hint}") from e


def rule_statement(store: Store, rule: RuleModel) -> str:
    """The rule's SQL as one SELECT statement with an ``id`` column, or PolicyError."""
    where = f"rule {rule.name!r}"
    if not store.sandboxed:
        # A programming error, not a user's: rule SQL must never run with files and network on.
        raise StoreError(
            f"{store.path} is not open sandboxed; rule SQL runs only on Store.open(..., sandbox=True)."
        )
    try:
        parsed = store.statements(rule.sql)
    except QueryError as e:
        raise PolicyError(f"{where}: SQL does not parse: {e.detail}. Fix the rule's sql.") from e
    if len(parsed) != 1:
        raise PolicyError(
            f"{where}: sql holds {len(parsed)} statements; a rule is exactly one SELECT."
        )
    kind, text = parsed[0]
    if kind != "SELECT":
        raise PolicyError(
            f"{where}: sql is a {kind} statement; a rule is one read-only SELECT returning an id column."
        )
    sql = text.strip().rstrip(";").strip()
    try:
        forbidden = sorted(store.functions_called(sql) & FORBIDDEN_FUNCTIONS)
    except QueryError as e:
        raise PolicyError(f"{where}: SQL does not parse: {e.detail}. Fix the rule's sql.") from e
    if forbidden:
        raise PolicyError(
            f"{where}: sql calls {', '.join(forbidden)}; a rule may not change sequences or run SQL text. "
            "Select from the tables and views directly."
        )
    columns, _ = _rule_rows(
        store,
        rule,
        f"SELECT * FROM (\n{sql}\n) AS rule_rows LIMIT 0",
        hint="Try it with `duckdb -readonly FILE`.",
    )
    if "id" not in columns:
        raise PolicyError(
            f"{where}: SQL returns columns {columns}, not an `id` column of flow-run ids; "
            "select e.g. `SELECT id FROM flow_runs WHERE ...`."
        )
    return sql


def check_rules(store: Store, loaded: LoadedPolicy) -> dict[str, int]:
    """Run every rule's SQL (read-only); rule name -> non-null ids returned."""
    counts = {}
    for rule in loaded.policy.rules:
        sql = rule_statement(store, rule)
        _, rows = _rule_rows(
            store, rule, f"SELECT count(CAST(id AS UUID)) AS n FROM (\n{sql}\n) AS rule_rows"
        )
        counts[rule.name] = int(rows[0]["n"])
    return counts


_SELECT = """
WITH picked AS (
    SELECT DISTINCT CAST(id AS UUID) AS id FROM (
{sql}
    ) AS rule_rows WHERE id IS NOT NULL
), runs AS (
    SELECT p.id AS picked_id, r.*,
           r.id IS NOT NULL AND r.deleted_at IS NULL AS live,
           coalesce(r.expected_start_time, r.start_time, r.created) AS sort_time
    FROM picked p LEFT JOIN flow_runs r ON r.id = p.id
)
SELECT CAST(r.picked_id AS VARCHAR) AS id, r.name, f.name AS flow_name, d.name AS deployment_name,
       r.state_type, r.state_name, r.tags, r.expected_start_time, r.end_time,
       r.id IS NULL AS unknown, r.deleted_at IS NOT NULL AS deleted,
       coalesce(list_has_any(r.tags, CAST(? AS VARCHAR[])), false) AS protected,
       CASE WHEN r.live THEN row_number() OVER (
           PARTITION BY r.live, r.deployment_id ORDER BY r.sort_time DESC NULLS LAST, r.picked_id DESC)
       END AS newest_rank
FROM runs r
LEFT JOIN flows f ON f.id = r.flow_id
LEFT JOIN deployments d ON d.id = r.deployment_id
ORDER BY r.sort_time ASC NULLS FIRST, r.picked_id
"""


def _select(
    store: Store, rule: RuleModel, sql: str, protect_tags: list[str]
) -> list[dict[str, Any]]:
    return _rule_rows(store, rule, _SELECT.format(sql=sql), [protect_tags])[1]


NOT_IN_FILE = "not in flow_runs"
DELETED = "already deleted"
PROTECTED = "protected tag"
NOT_SELECTED = "the rule's SQL no longer selects it"
OVER_MAX = "max_actions"


def plan_rule(rule: RuleModel, rows: list[dict[str, Any]], claimed: set[str]) -> RulePlan:
    """Apply the guards to one rule's rows (oldest first); adds the chosen ids to ``claimed``."""
    out = RulePlan(rule, selected=len(rows))
    for row in rows:
        if row["unknown"]:
            out.skip(row["id"], NOT_IN_FILE)
        elif row["deleted"]:
            out.skip(row["id"], DELETED)
        elif row["state_type"] is None:
            out.skip(row["id"], "no known state")
        elif row["protected"]:
            out.skip(row["id"], PROTECTED)
        elif rule.keep_newest is not None and row["newest_rank"] <= rule.keep_newest:
            out.skip(row["id"], "keep_newest")
        elif row["id"] in claimed:
            out.skip(row["id"], "taken by an earlier rule")
        elif rule.limit is not None and len(out.runs) >= rule.limit:
            out.skip(row["id"], "over the rule's limit")
        else:
            claimed.add(row["id"])
            out.runs.append(
                PlannedRun(
                    id=row["id"],
                    name=row["name"],
                    flow_name=row["flow_name"],
                    deployment_name=row["deployment_name"],
                    state_type=row["state_type"],
                    state_name=row["state_name"],
                    tags=tuple(row["tags"] or ()),
                    expected_start_time=row["expected_start_time"],
                    end_time=row["end_time"],
                )
            )
    return out


def make_plan(
    store: Store,
    loaded: LoadedPolicy,
    now: datetime | None = None,
    *,
    describe: bool = True,
    statements: dict[str, str] | None = None,
) -> Plan:
    """What applying ``loaded`` would do to the runs in ``store``; changes nothing.

    ``statements`` (from an earlier plan of the same policy) skips checking each
    rule's SQL again; ``describe`` adds how old the data is.
    """
    claimed: set[str] = set()
    rules = []
    checked = dict(statements or {})
    if not store.sandboxed:
        raise StoreError(
            f"{store.path} is not open sandboxed; rule SQL runs only on Store.open(..., sandbox=True)."
        )
    for rule in loaded.policy.rules:
        if rule.name not in checked:
            checked[rule.name] = rule_statement(store, rule)  # a disabled rule must still be valid
        if not rule.enabled:
            rules.append(RulePlan(rule))
            continue
        rows = _select(store, rule, checked[rule.name], list(loaded.policy.protect_tags))
        rules.append(plan_rule(rule, rows, claimed))
    plan = Plan(loaded, rules, now or datetime.now(timezone.utc), statements=checked)
    if describe:  # how old the data is (not needed by apply's re-check)
        planned = [run.id for rp in rules for run in rp.runs]
        plan.last_pull_at = sync_log.last_pull_at(store)
        plan.oldest_read_at = synced_tables.oldest_read(store, planned) if planned else None
    return plan


def selected_ids(plan: Plan) -> list[str]:
    """Every run the rules' SQL returned that is in the file: planned, or skipped by a guard."""
    ids: dict[str, None] = {}
    for rp in plan.rules:
        ids.update(dict.fromkeys(run.id for run in rp.runs))
        ids.update(dict.fromkeys(i for i, why in rp.reasons.items() if why != NOT_IN_FILE))
    return list(ids)


def decide(store: Store, confirmed: Plan) -> Plan:
    """The confirmed plan's policy planned again over the file as it is now (apply's re-check)."""
    return make_plan(store, confirmed.policy, describe=False, statements=confirmed.statements)


def recheck(now: Plan, confirmed: Plan, rule: RuleModel, ids: list[str]) -> dict[str, str | None]:
    """For runs ``rule`` has in the confirmed plan: None if ``now`` (``decide``: the whole
    policy computed again over the file) still gives them to ``rule``; else why not.

    Every guard counts: the rule's SQL, protect_tags, keep_newest, limit, earlier
    rules, and max_actions (rules that now select more than it stop everything).
    """
    if now.over_max:
        why = f"{OVER_MAX}: the rules now select {now.total} runs, more than {confirmed.policy.policy.max_actions}"
        return dict.fromkeys(ids, why)
    mine = next(rp for rp in now.rules if rp.rule.name == rule.name)
    chosen = {run.id for run in mine.runs}
    return {i: None if i in chosen else mine.reasons.get(i, NOT_SELECTED) for i in ids}
