"""What a policy would do: a pure function of the policy and the local DuckDB file.

Owns: checking each rule's SQL (one read-only SELECT with an ``id`` column),
running it, and turning its rows into the runs each rule would touch after the
policy's guards (locally deleted, no known state, protected tags, keep_newest,
claimed by an earlier rule, per-rule limit). Must not: call the API, write to
the store, or print. Rule SQL is meant for a read-only ``Store``; DuckDB then
refuses any write, and only a single SELECT statement gets that far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flowsync.errors import PolicyError, QueryError
from flowsync.policy.model import DeleteRule, LoadedPolicy, SetStateRule
from flowsync.store import Store

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
    """One rule's selection, and why the runs it left out were left out."""

    rule: RuleModel
    runs: list[PlannedRun] = field(default_factory=list)
    selected: int = 0  # distinct ids the SQL returned
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> runs

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def to_json(self, sample: int | None = None) -> dict[str, Any]:
        runs = self.runs if sample is None else self.runs[:sample]
        out: dict[str, Any] = {
            "rule": self.rule.name,
            "action": self.rule.action,
            "enabled": self.rule.enabled,
            "runs": len(self.runs),
            "selected_by_sql": self.selected,
            "left_out": self.skipped,
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
            "rules": [r.to_json(sample) for r in self.rules],
        }


def by_state(runs: list[PlannedRun]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state_type] = counts.get(run.state_type, 0) + 1
    return counts


# -- rule SQL -------------------------------------------------------------------


def rule_statement(store: Store, rule: RuleModel) -> str:
    """The rule's SQL as one SELECT statement with an ``id`` column, or PolicyError."""
    where = f"rule {rule.name!r}"
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
        columns, _ = store.execute(f"SELECT * FROM (\n{sql}\n) AS rule_rows LIMIT 0").dicts()
    except QueryError as e:
        raise PolicyError(f"{where}: SQL failed: {e.detail}. Try it with `duckdb -readonly FILE`.") from e
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
        try:
            _, rows = store.execute(
                f"SELECT count(CAST(id AS UUID)) AS n FROM (\n{sql}\n) AS rule_rows"
            ).dicts()
        except QueryError as e:
            raise PolicyError(
                f"rule {rule.name!r}: SQL failed: {e.detail}. The id column must hold flow-run ids (UUIDs)."
            ) from e
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


def _select(store: Store, rule: RuleModel, protect_tags: list[str]) -> list[dict[str, Any]]:
    sql = rule_statement(store, rule)
    try:
        return store.execute(_SELECT.format(sql=sql), [protect_tags]).dicts()[1]
    except QueryError as e:
        raise PolicyError(
            f"rule {rule.name!r}: SQL failed: {e.detail}. The id column must hold flow-run ids (UUIDs)."
        ) from e


def plan_rule(
    rule: RuleModel, rows: list[dict[str, Any]], claimed: set[str]
) -> RulePlan:
    """Apply the guards to one rule's rows (oldest first); adds the chosen ids to ``claimed``."""
    out = RulePlan(rule, selected=len(rows))
    for row in rows:
        if row["unknown"]:
            out.skip("not in flow_runs")
        elif row["deleted"]:
            out.skip("already deleted")
        elif row["state_type"] is None:
            out.skip("no known state")
        elif row["protected"]:
            out.skip("protected tag")
        elif rule.keep_newest is not None and row["newest_rank"] <= rule.keep_newest:
            out.skip("keep_newest")
        elif row["id"] in claimed:
            out.skip("taken by an earlier rule")
        elif rule.limit is not None and len(out.runs) >= rule.limit:
            out.skip("over the rule's limit")
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


def make_plan(store: Store, loaded: LoadedPolicy, now: datetime | None = None) -> Plan:
    """What applying ``loaded`` would do to the runs in ``store``; changes nothing."""
    claimed: set[str] = set()
    rules = []
    for rule in loaded.policy.rules:
        if not rule.enabled:
            rule_statement(store, rule)  # a disabled rule must still be valid
            rules.append(RulePlan(rule))
            continue
        rows = _select(store, rule, list(loaded.policy.protect_tags))
        rules.append(plan_rule(rule, rows, claimed))
    return Plan(loaded, rules, now or datetime.now(timezone.utc))
