"""What a policy would do: a pure function of the policy and the local DuckDB file.

Owns: running each rule's checked SQL (``policy/rulesql.py`` checks and runs it on
a sandbox) and turning its rows into the runs each rule would touch after the
policy's guards (locally deleted, no known state, protected tags, keep_newest,
claimed by an earlier rule, per-rule limit), with the reason for every run a guard
skipped. The plan's runs go to a store of its own (``policy/planned.py``), a page
at a time, so planning a million runs holds a page in memory, not the runs.
Must not: call the API, write to the user's file (its rows are paged through a
TEMP table of the plan's connection: read-only, or a transaction rolled back), or print.

Plan runs rule SQL on a read-only connection; apply, which must write its audit on
the same file, runs it inside a transaction it always rolls back.

``decide_scope`` is apply's decision for one batch: the same guards, over the
batch's runs and every run ranked with them (``keep_newest`` ranks whole
deployments), so its cost follows the batch, not the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flowsync.errors import PolicyError, StoreError
from flowsync.policy.model import LoadedPolicy
from flowsync.policy.planned import Decided as Decided
from flowsync.policy.planned import Plan as Plan
from flowsync.policy.planned import PlannedRun as PlannedRun
from flowsync.policy.planned import PlanRuns as PlanRuns
from flowsync.policy.planned import RuleModel as RuleModel
from flowsync.policy.planned import RulePlan as RulePlan
from flowsync.policy.rulesql import (
    functions,
    rule_errors,
    rule_reads,
    rule_rows,
    rule_statement,
    sandboxed,
)
from flowsync.store import Sandbox, sync_log
from flowsync.store.synced_tables import Stamp, held_rows, unstamped_sql
from flowsync.store.tables import FLOW_RUNS

# DuckDB's memory cap on the connection a plan reads (MB): the ranking of a rule's picks
# spills past it, so planning a million runs needs about what planning 100k does.
PLAN_MEMORY_MB = 64


@dataclass(frozen=True)
class Scope:
    """What one decision is about: these runs, ranked within these deployments in full."""

    ids: tuple[str, ...]
    deployments: tuple[str | None, ...] = ()  # None: the runs without a deployment


# Only the columns the guards and the plan's listing need: a rule's picks joined to
# whole rows (JSON columns included) cost more than the rule itself at a million runs.
# The distinct ids a rule's SQL returns (``{sql}``), the start of every selection below.
_PICKED = """
WITH picked AS (
    SELECT DISTINCT CAST(id AS UUID) AS id FROM (
{sql}
    ) AS rule_rows WHERE id IS NOT NULL
)"""
# The plan's ranking of a rule's picks: the narrowest rows that rank them (id, deployment,
# sort time), so that its sorts stay small and spill under the plan connection's memory cap;
# stored in rank order (pos is 1..n), so a page is a range of pos.
_RANKED = (
    _PICKED
    + """, runs AS (
    SELECT p.id AS picked_id, r.deployment_id, r.adhoc_flow, r.sort_time,
           coalesce(r.live, false) AS live
    FROM picked p LEFT JOIN (
        SELECT id, deployment_id, deleted_at IS NULL AS live,
               CASE WHEN deployment_id IS NULL THEN flow_id END AS adhoc_flow,
               coalesce(expected_start_time, start_time, created) AS sort_time
        FROM flow_runs) r ON r.id = p.id
)
-- keep_newest ranks within a deployment; runs without one, within their flow
SELECT row_number() OVER (ORDER BY sort_time ASC NULLS FIRST, picked_id) AS pos, picked_id,
       CASE WHEN live THEN row_number() OVER (
           PARTITION BY live, deployment_id, adhoc_flow
           ORDER BY sort_time DESC NULLS LAST, picked_id DESC)
       END AS newest_rank
FROM runs
ORDER BY pos
"""
)
# One page of the ranked picks ({ranked}: that table), with what the guards and the plan's
# listing read of each run, in rank order.
_LISTED = """
SELECT x.pos, CAST(x.picked_id AS VARCHAR) AS id, r.name, f.name AS flow_name,
       d.name AS deployment_name, r.state_type, r.state_name, r.tags, r.expected_start_time,
       r.end_time, CAST(r.deployment_id AS VARCHAR) AS deployment_id,
       r.id IS NULL AS unknown, r.deleted_at IS NOT NULL AS deleted,
       coalesce(list_has_any(r.tags, CAST(? AS VARCHAR[])), false) AS protected,
       x.newest_rank, r.synced_at
FROM (SELECT * FROM {ranked} WHERE pos > ? AND pos <= ?) x
LEFT JOIN flow_runs r ON r.id = x.picked_id
LEFT JOIN flows f ON f.id = r.flow_id
LEFT JOIN deployments d ON d.id = r.deployment_id
ORDER BY x.pos
"""
# Picks listed per page: enough to keep the page's scan of flow_runs rare.
LIST_PAGE = 50_000
# A batch's decision: its runs, ranked by keep_newest against only the runs that can outrank
# them. The ranking reads three narrow columns of the batch's deployments (the N newest
# picked live runs of each), so its cost follows the rule's scan, not the deployment's size.
# Unranked ({picked}: _PICKED_IN_SCOPE), the rule's picks matter only for the batch's runs:
# they are asked for those alone, so that a rule selecting most of a million-run file does
# not hash every pick for 50 runs (DuckDB pushes the id filter into the rule's scan when it can).
_PICKED_IN_SCOPE = """
WITH picked AS (
    SELECT DISTINCT CAST(id AS UUID) AS id FROM (
{sql}
    ) AS rule_rows WHERE CAST(id AS UUID) IN (SELECT unnest(CAST($ids AS UUID[])))
)"""
_SELECT_SCOPED = (
    "{picked}"
    + """, kept AS (
    SELECT k.id, row_number() OVER (
               PARTITION BY k.deployment_id, k.adhoc_flow
               ORDER BY k.sort_time DESC NULLS LAST, k.id DESC) AS newest_rank
    FROM (SELECT id, deployment_id, CASE WHEN deployment_id IS NULL THEN flow_id END AS adhoc_flow,
                 coalesce(expected_start_time, start_time, created) AS sort_time
          FROM flow_runs
          WHERE deleted_at IS NULL AND $keep IS NOT NULL
            AND (deployment_id IN (SELECT unnest(CAST($deployments AS UUID[])))
                 -- runs without a deployment rank within their flow: the flows of the scope's
                 OR ($adhoc AND deployment_id IS NULL AND flow_id IN (
                     SELECT flow_id FROM flow_runs
                     WHERE deployment_id IS NULL AND id IN (SELECT unnest(CAST($ids AS UUID[]))))))
         ) AS k
    WHERE k.id IN (SELECT id FROM picked)
    QUALIFY newest_rank <= $keep
), wanted AS (
    SELECT unnest(CAST($ids AS UUID[])) AS id UNION SELECT id FROM kept
), runs AS (
    SELECT w.id AS picked_id, r.*, r.id IS NOT NULL AND r.deleted_at IS NULL AS live,
           w.id IN (SELECT id FROM picked) AS is_picked
    FROM wanted w
    LEFT JOIN (SELECT id, state_type, tags, deleted_at, updated, {unstamped} AS unstamped,
                      {row_id} AS row_id,
                      coalesce(expected_start_time, start_time, created) AS sort_time
               FROM {runs}) r ON r.id = w.id
)
SELECT CAST(r.picked_id AS VARCHAR) AS id, r.state_type, r.updated, r.unstamped, r.row_id, r.live,
       r.is_picked, r.id IS NULL AS unknown, r.deleted_at IS NOT NULL AS deleted,
       coalesce(list_has_any(r.tags, protect.tags), false) AS protected,
       CASE WHEN r.live THEN coalesce(k.newest_rank, $keep + 1) END AS newest_rank
FROM runs r
-- cast once: cast in each row's expression, the parameter cost ~9 ms for 400 rows
CROSS JOIN (SELECT CAST($protect AS VARCHAR[]) AS tags) protect
LEFT JOIN kept k ON k.id = r.picked_id
ORDER BY r.sort_time ASC NULLS FIRST, r.picked_id
"""
)


# Where a decision reads its runs' own rows: the file, or (``held``) the rows a re-read
# just returned, staged as the file holds them.
_RUNS_IN_FILE = "flow_runs WHERE id IN (SELECT id FROM wanted)"


def _select(
    store: Sandbox,
    rule: RuleModel,
    sql: str,
    protect_tags: list[str],
    scope: Scope,
    timeout: float | None,
    held: str | None = None,
) -> list[dict[str, Any]]:
    deployments = [d for d in scope.deployments if d is not None]
    params: dict[str, Any] = {
        "protect": protect_tags,
        "ids": list(scope.ids),
        "deployments": deployments,
        "adhoc": len(deployments) < len(scope.deployments),
        "keep": rule.keep_newest if scope.deployments else None,
    }
    # Without a ranking (no keep_newest here) only the scope's own runs can be picked.
    picked = _PICKED if params["keep"] is not None else _PICKED_IN_SCOPE
    in_held = held is not None and params["keep"] is None
    text = _SELECT_SCOPED.format(
        picked=picked.format(sql=sql),
        runs=f"({held}) AS held" if in_held else _RUNS_IN_FILE,
        row_id="CAST(NULL AS BIGINT)" if in_held else "rowid",
        unstamped=unstamped_sql(),
    )
    return rule_rows(store, rule, text, params, timeout=timeout)[1]


NOT_IN_FILE = "not in flow_runs"
DELETED = "already deleted"
PROTECTED = "protected tag"
KEEP_NEWEST = "keep_newest"
TAKEN = "taken by an earlier rule"
OVER_LIMIT = "over the rule's limit"
NOT_SELECTED = "the rule's SQL no longer selects it"
OVER_MAX = "max_actions"


class _Guards:
    """The guards over one rule's rows, oldest first, one row at a time: the one definition
    the plan (paged over the plan's store) and apply's batch decision (in memory) share."""

    def __init__(self, rule: RuleModel, *, limit: bool = True) -> None:
        self.rule, self.limit, self.planned = rule, limit, 0

    def reason(self, row: dict[str, Any], taken: bool) -> str | None:
        """Why the row is skipped (None: the rule acts on it). ``taken``: an earlier rule has it."""
        return self.verdict(
            row["unknown"],
            row["deleted"],
            row["state_type"],
            row["protected"],
            row["newest_rank"],
            taken,
        )

    def verdict(
        self,
        unknown: bool,
        deleted: bool,
        state_type: str | None,
        protected: bool,
        newest_rank: int | None,
        taken: bool,
    ) -> str | None:
        """``reason`` over the row's columns."""
        rule = self.rule
        if unknown:
            return NOT_IN_FILE
        if deleted:
            return DELETED
        if state_type is None:
            return "no known state"
        if protected:
            return PROTECTED
        if (
            rule.keep_newest is not None
            and newest_rank is not None
            and newest_rank <= rule.keep_newest
        ):
            return KEEP_NEWEST
        if taken:
            return TAKEN
        if self.limit and rule.limit is not None and self.planned >= rule.limit:
            return OVER_LIMIT
        self.planned += 1
        return None


def plan_rule(
    rule: RuleModel, rows: list[dict[str, Any]], claimed: set[str], *, limit: bool = True
) -> Decided:
    """Apply the guards to one rule's rows (oldest first); adds the chosen ids to ``claimed``.

    ``limit=False`` leaves the rule's limit out (apply: the confirmed plan bounds it)."""
    out = Decided(rule, selected=len(rows))
    guards = _Guards(rule, limit=limit)
    for row in rows:
        why = guards.reason(row, row["id"] in claimed)
        if why is None:
            claimed.add(row["id"])
            out.chosen.append(row["id"])
        else:
            out.reasons[row["id"]] = why
    return out


# A rule's rows on their way from the plan's connection to the plan's store: TEMP tables,
# so nothing is written to the user's file (and a writable connection rolls them back).
_RANKED_TABLE = "flowsync_plan_ranked"


def _plan_rule_runs(
    store: Sandbox,
    runs: PlanRuns,
    out: RulePlan,
    sql: str,
    protect: list[str],
    timeout: float | None,
    earlier: bool,
) -> datetime | None:
    """One enabled rule's rows through the guards, a page at a time, into ``runs``; fills
    ``out``'s counts and returns the oldest read of a run it plans. ``earlier``: an
    earlier rule planned runs (which this one may not take)."""
    import polars as pl

    guards = _Guards(out.rule)
    oldest: datetime | None = None
    with sandboxed(store):
        try:
            with rule_errors(out.rule, "The id column must hold flow-run ids (UUIDs)."):
                store.execute(
                    f"CREATE OR REPLACE TEMP TABLE {_RANKED_TABLE} AS {_RANKED.format(sql=sql)}",
                    timeout=timeout,
                )
            after = 0
            while True:  # pos is 1..n: a page is a range of it
                page = store.frame(
                    _LISTED.format(ranked=_RANKED_TABLE), [protect, after, after + LIST_PAGE]
                )
                if page.is_empty():
                    break
                taken = runs.taken(page["id"].to_list()) if earlier else set()
                reasons: list[str | None] = []
                columns = [page[name].to_list() for name in _GUARDED]
                for run_id, unknown, deleted, state, protected, rank, read in zip(*columns):
                    why = guards.verdict(unknown, deleted, state, protected, rank, run_id in taken)
                    reasons.append(why)
                    if why is None:
                        out.by_state[state] = out.by_state.get(state, 0) + 1
                        if read is not None and (oldest is None or read < oldest):
                            oldest = read
                    else:
                        out.skipped[why] = out.skipped.get(why, 0) + 1
                runs.add(out.number, page.with_columns(reason=pl.Series(reasons, dtype=pl.Utf8)))
                out.selected += page.height
                after += LIST_PAGE
        finally:
            with contextlib.suppress(StoreError):  # a failed statement may have ended it all
                store.execute(f"DROP TABLE IF EXISTS {_RANKED_TABLE}")
    out.planned = guards.planned
    return oldest


# What the guards read of a row.
_GUARDED = ["id", "unknown", "deleted", "state_type", "protected", "newest_rank", "synced_at"]


def make_plan(
    store: Sandbox,
    loaded: LoadedPolicy,
    now: datetime | None = None,
    *,
    describe: bool = True,
    statements: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Plan:
    """What applying ``loaded`` would do to the runs in ``store``; changes nothing.

    ``statements`` (from an earlier plan of the same policy) skips checking each
    rule's SQL again; ``describe`` adds how old the data is; ``timeout`` replaces
    the policy's time limit per rule statement (seconds).
    """
    limit = timeout or loaded.policy.rule_timeout_seconds
    rules: list[RulePlan] = []
    checked = dict(statements or {})
    cross: dict[str, str] = {}
    lookups: dict[str, frozenset[str]] = {}
    runs = PlanRuns()
    oldest: datetime | None = None
    try:
        known = functions(store)
        for rule in loaded.policy.rules:
            if rule.name not in checked:
                checked[rule.name] = rule_statement(
                    store, rule, known, limit
                )  # a disabled rule must still be valid
            reads = rule_reads(store, checked[rule.name], known)
            if reads.other_runs:
                cross[rule.name] = reads.other_runs
            if reads.lookups:
                lookups[rule.name] = reads.lookups
            if not rule.enabled:
                rules.append(RulePlan(rule))
                continue
            out = RulePlan(rule, number=len(rules), runs_store=runs)
            earlier = any(rp.planned for rp in rules)
            read = _plan_rule_runs(
                store,
                runs,
                out,
                checked[rule.name],
                list(loaded.policy.protect_tags),
                limit,
                earlier,
            )
            if read is not None and (oldest is None or read < oldest):
                oldest = read
            rules.append(out)
    except BaseException:
        runs.close()
        raise
    plan = Plan(
        loaded,
        rules,
        now or datetime.now(timezone.utc),
        statements=checked,
        timeout=limit,
        reads_other_runs=cross,
        reads_lookups=lookups,
        runs_store=runs,
    )
    if describe:  # how old the data is (not needed by apply's re-check)
        plan.last_pull_at = sync_log.last_pull_at(store)
        plan.server = sync_log.server_record(store)
        plan.oldest_read_at = oldest
    return plan


def selected_ids(plan: Plan) -> list[str]:
    """Every run the rules' SQL returned that is in the file: planned, or skipped by a guard."""
    if plan.runs_store is None:
        return []
    return plan.runs_store.selected(besides=NOT_IN_FILE)


@dataclass(frozen=True)
class Decision:
    """One batch decided again over the file: why each run not to send is left, and the
    runs that rank above the batch (kept by ``keep_newest``), which the decision rests on."""

    reasons: dict[str, str | None]  # batch run -> None (send) or why not
    # runs ranked among keep_newest's newest in the batch's deployments (kept, or left by
    # another guard: a protected run still holds its place)
    ranked_above: frozenset[str]
    # Read from the file (not over held rows): each live batch run's stamp (``updated`` and
    # the columns the server changes without it) and row id as the decision saw them (the
    # stamps a re-read is compared with; row ids, hints).
    rows: Mapping[str, tuple[Stamp, int]] = field(default_factory=dict)


def decide_scope(
    store: Sandbox,
    confirmed: Plan,
    rule: RuleModel,
    scope: Scope,
    held: Sequence[Mapping[str, Any]] = (),
) -> Decision:
    """The confirmed plan's policy decided again over the file for ``scope.ids`` of ``rule``.

    Every guard the plan applies counts, up to and including ``rule``: the rules'
    SQL, protect_tags, keep_newest (ranked over whole deployments: ``scope.deployments``
    must hold every deployment of the batch), earlier rules. Limits and
    max_actions bound the confirmed plan, which bounds what apply sends, so
    they are not counted again (a run over an earlier rule's limit at plan time
    stays over it).

    ``held``: the scope's runs as a re-read just returned them (API objects), once
    the file holds them (the re-read wrote every run whose ``updated`` stamp moved).
    An unranked decision reads the guards' columns of the runs from these, staged as
    the file holds such a row, rather than finding 50 rows by id among a million (the
    rules' own SQL still runs over the file); a scope run not among them is treated as
    not in the file."""
    staged = (
        held_rows(store, FLOW_RUNS, [dict(r) for r in held], "_decide_held")
        if held
        else contextlib.nullcontext(None)
    )
    with staged as runs:
        mine, kept, rows = _decide_rules(store, confirmed, rule, scope, runs)
    chosen = set(mine.chosen)
    reasons = {i: None if i in chosen else mine.reasons.get(i, NOT_SELECTED) for i in scope.ids}
    return Decision(reasons, frozenset(kept), rows)


def _decide_rules(
    store: Sandbox, confirmed: Plan, rule: RuleModel, scope: Scope, held: str | None
) -> tuple[Decided, set[str], dict[str, tuple[Stamp, int]]]:
    """``decide_scope``'s rules in order, up to ``rule``: its decision, the runs
    keep_newest kept on the way, and the scope's live rows as read (``Decision.rows``)."""
    protect = list(confirmed.policy.policy.protect_tags)
    claimed: set[str] = set()
    kept: set[str] = set()
    mine: Decided | None = None
    rows: list[dict[str, Any]] = []
    for candidate in confirmed.policy.policy.rules:
        if not candidate.enabled:
            continue
        sql = confirmed.statements[candidate.name]
        rows = _select(store, candidate, sql, protect, scope, confirmed.timeout, held)
        picked = [r for r in rows if r["is_picked"]]
        decided = plan_rule(candidate, picked, claimed, limit=False)
        if candidate.keep_newest is not None:
            # Every run the ranking counts among the newest, whatever guard leaves it (a
            # protected run ranks too): the re-read reads each, or a run gone or moved on
            # since the pull would still hold a place that is now the batch's.
            kept.update(
                r["id"]
                for r in picked
                if r["newest_rank"] is not None and r["newest_rank"] <= candidate.keep_newest
            )
        if candidate.name == rule.name:
            mine = decided
            break
        # A run over this earlier rule's limit at plan time is not taken by it now.
        if candidate.limit is not None:
            claimed.difference_update(confirmed.skipped_for(candidate, OVER_LIMIT, claimed))
    if mine is None:
        raise PolicyError(f"rule {rule.name!r} is not an enabled rule of the confirmed plan")
    scope_ids = set(scope.ids)
    live = {
        r["id"]: ((r["updated"], tuple(r["unstamped"])), int(r["row_id"]))
        for r in rows  # (every rule's selection reads the same runs' rows)
        if r["live"] and r["row_id"] is not None and r["id"] in scope_ids
    }
    return mine, kept, live
