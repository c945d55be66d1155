"""Applying a plan: bulk API calls in batches, every answer recorded, then a refresh.

Owns: the loop over batches (one rule, one state type, at most 50 ids each),
reading every per-run result of the server's answer, the ``policy_actions``
audit rows, and the final classification (success / partial / error). Each
call names its runs explicitly (``id.any_``) and carries the state type each
run had when selected, so a run changed on the server since the last pull is
left alone. A failed batch does not stop the next one. Must not: select runs
(that is ``plan``), print, or import httpx/duckdb.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from flowsync.api import PrefectClient
from flowsync.api.client import BULK_LIMIT
from flowsync.errors import (
    ApiError,
    AuthError,
    FlowsyncError,
    PolicyError,
    PolicyLimitError,
    StoreError,
)
from flowsync.policy.model import SetStateRule
from flowsync.policy.plan import Plan, RuleModel
from flowsync.store import Store, audit, synced_tables
from flowsync.sync import NullProgress, Progress, refresh_runs

# Outcomes that mean "not done, and not because the safety guard held": exit 9.
FAILED = frozenset({"failed", "rejected", "aborted", "wait", "pending"})
_STATUS = {"ACCEPT": "accepted", "REJECT": "rejected", "ABORT": "aborted", "WAIT": "wait"}
Outcomes = dict[str, tuple[str, Any]]


@dataclass(frozen=True)
class Batch:
    rule: RuleModel
    state_type: str  # every run in the batch had this state type when selected
    ids: list[str]


def batches(plan: Plan, size: int = BULK_LIMIT) -> Iterator[Batch]:
    """Per rule, per state type, chunks of at most ``size`` ids (never empty)."""
    size = max(1, min(size, BULK_LIMIT))
    for rule_plan in plan.rules:
        by_type: dict[str, list[str]] = {}
        for run in rule_plan.runs:
            by_type.setdefault(run.state_type, []).append(run.id)
        for state_type, ids in by_type.items():
            for i in range(0, len(ids), size):
                yield Batch(rule_plan.rule, state_type, ids[i : i + size])


@dataclass
class ApplyResult:
    apply_id: str
    policy_sha256: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> outcome -> runs
    errors: list[str] = field(default_factory=list)
    refreshed: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(n for per in self.counts.values() for o, n in per.items() if o in FAILED)

    @property
    def done(self) -> int:
        return sum(n for per in self.counts.values() for o, n in per.items() if o in ("deleted", "accepted"))

    @property
    def status(self) -> str:
        """success (nothing failed), partial (some failed), or error (nothing done, something failed)."""
        if not self.failed and not self.errors:
            return "success"
        return "partial" if self.done else "error"

    def to_json(self) -> dict[str, Any]:
        return {
            "apply_id": self.apply_id,
            "policy_sha256": self.policy_sha256,
            "status": self.status,
            "done": self.done,
            "failed": self.failed,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "rules": self.counts,
            "errors": self.errors,
            "refreshed": self.refreshed,
        }


def check_guards(plan: Plan) -> None:
    """max_actions and protect_tags, enforced again right before any API call."""
    policy = plan.policy.policy
    if plan.over_max:
        raise PolicyLimitError(
            f"{plan.policy.source}: the rules select {plan.total} runs, more than max_actions "
            f"({policy.max_actions}); narrow the rules, add a per-rule limit, or raise max_actions."
        )
    protected = set(policy.protect_tags)
    for rule_plan in plan.rules:
        for run in rule_plan.runs:
            if protected.intersection(run.tags):
                raise PolicyError(f"run {run.id} has a protected tag but was planned; refusing to apply.")


def _delete_outcomes(ids: list[str], answer: dict[str, Any]) -> tuple[Outcomes, list[str]]:
    deleted = answer.get("deleted")
    if not isinstance(deleted, list):
        raise ApiError("POST /flow_runs/bulk_delete answered without a `deleted` list.")
    got = {str(i) for i in deleted}
    stray = sorted(got.difference(ids))
    out: Outcomes = {i: ("deleted", None) if i in got else ("unanswered", None) for i in ids}
    return out, [f"server reported deleting runs that were not asked for: {stray}"] if stray else []


def _set_state_outcomes(ids: list[str], answer: dict[str, Any]) -> tuple[Outcomes, list[str]]:
    results = answer.get("results")
    if not isinstance(results, list):
        raise ApiError("POST /flow_runs/bulk_set_state answered without a `results` list.")
    out: Outcomes = {i: ("unanswered", None) for i in ids}
    notes = []
    for item in results:
        run_id = str(item.get("flow_run_id"))
        if run_id not in out:
            notes.append(f"server answered for a run that was not asked for: {run_id}")
            continue
        status = str(item.get("status"))
        state = item.get("state") or {}
        details = {
            "status": status,
            "details": item.get("details"),
            "state": {"type": state.get("type"), "name": state.get("name")} if state else None,
        }
        out[run_id] = (_STATUS.get(status, "failed"), details)
    return out, notes


def _send(client: PrefectClient, batch: Batch) -> tuple[Outcomes, list[str]]:
    rule = batch.rule
    if isinstance(rule, SetStateRule):
        answer = client.bulk_set_state(
            batch.ids, rule.state.to_api(), force=rule.force, state_types=[batch.state_type]
        )
        return _set_state_outcomes(batch.ids, answer)
    answer = client.bulk_delete(batch.ids, state_types=[batch.state_type])
    return _delete_outcomes(batch.ids, answer)


def _requested(rule: RuleModel) -> dict[str, Any] | None:
    if isinstance(rule, SetStateRule):
        return {"state": rule.state.to_api(), "force": rule.force}
    return None


def _resolve_unanswered(store: Store, unanswered: dict[str, tuple[str, Any]]) -> Outcomes:
    """After the refresh: runs the server did not act on were gone, changed, or failed."""
    if not unanswered:
        return {}
    _, rows = store.execute(
        """
        SELECT CAST(id AS VARCHAR) AS id, state_type, deleted_at IS NOT NULL AS deleted
        FROM flow_runs WHERE id IN (SELECT unnest(CAST(? AS UUID[])))
        """,
        [list(unanswered)],
    ).dicts()
    now = {r["id"]: r for r in rows}
    out: Outcomes = {}
    for run_id, (before, error) in unanswered.items():
        row = now.get(run_id)
        extra = {"error": error} if error else {}
        if row is None or row["deleted"]:
            out[run_id] = ("gone", {"reason": "no longer on the server", **extra})
        elif row["state_type"] != before:
            out[run_id] = ("skipped", {
                "reason": "state changed on the server since the last pull; left alone",
                "state_type_now": row["state_type"], **extra,
            })
        else:
            out[run_id] = ("failed", {
                "reason": "the server did not act on it; run apply again", **extra,
            })
    return out


def _wait(future: Future[Any]) -> None:
    """Block until the request finishes; its result or error is read later by ``settle``."""
    wait([future])


def apply_plan(
    client: PrefectClient,
    store: Store,
    plan: Plan,
    *,
    progress: Progress | None = None,
    batch_size: int = BULK_LIMIT,
    refresh: bool = True,
) -> ApplyResult:
    """Send the plan's batches, record every answer, refresh the touched runs locally."""
    check_guards(plan)
    if store.read_only:
        raise StoreError(f"{store.path} is open read-only; apply needs to write its audit rows.")
    progress = progress or NullProgress()
    began = time.monotonic()
    result = ApplyResult(apply_id=str(uuid.uuid4()), policy_sha256=plan.policy.sha256)
    state_before = {run.id: run.state_type for rp in plan.rules for run in rp.runs}
    unanswered: dict[str, tuple[str, Any]] = {}  # id -> (state type before, batch error)
    deleted: list[str] = []
    progress.phase("apply", total=plan.total)

    def record(number: int, batch: Batch) -> None:
        audit.record_batch(
            store, apply_id=result.apply_id, batch=number, api_url=client.settings.display_url,
            policy_path=plan.policy.source, policy_sha256=plan.policy.sha256, rule=batch.rule.name,
            action=batch.rule.action, requested_state=_requested(batch.rule),
            state_type=batch.state_type, ids=batch.ids,
        )

    def settle(number: int, batch: Batch, sent: Future[tuple[Outcomes, list[str]]]) -> None:
        try:
            outcomes, notes = sent.result()
        except ApiError as e:
            message = f"batch {number} ({batch.rule.name}, {len(batch.ids)} runs): {e}"
            result.errors.append(message)
            progress.message(message)
            outcomes, notes = {i: ("unanswered", str(e)) for i in batch.ids}, []
            if isinstance(e, AuthError):
                audit.record_outcomes(store, result.apply_id, {i: ("failed", {"error": str(e)}) for i in batch.ids})
                raise
        result.errors.extend(notes)
        deleted.extend(i for i, (outcome, _) in outcomes.items() if outcome == "deleted")
        for run_id, (outcome, details) in outcomes.items():
            if outcome == "unanswered":
                unanswered[run_id] = (state_before[run_id], details)
                outcomes[run_id] = ("failed", {"error": details} if details else None)
        audit.record_outcomes(store, result.apply_id, outcomes)
        progress.advance(len(batch.ids))

    # One request in flight at a time (the server sees sequential calls), but the
    # local bookkeeping of one batch overlaps the server's work on the next. A
    # batch is always recorded as pending before it is sent.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowsync-apply") as pool:
        in_flight: tuple[int, Batch, Future[tuple[Outcomes, list[str]]]] | None = None
        try:
            for number, batch in enumerate(batches(plan, batch_size), 1):
                result.batches = number
                record(number, batch)
                previous = in_flight
                if previous is not None:
                    _wait(previous[2])
                in_flight = (number, batch, pool.submit(_send, client, batch))
                if previous is not None:
                    settle(*previous)
            if in_flight is not None:
                previous, in_flight = in_flight, None
                settle(*previous)
        except BaseException:
            if in_flight is not None:
                _wait(in_flight[2])  # never leave a request running behind the caller's back
            raise
    if refresh and state_before:
        # Runs the server reported deleted are marked here; re-reading them would
        # only confirm their absence. Every other touched run is re-read.
        with store.transaction():
            result.refreshed["marked_deleted"] = synced_tables.mark_deleted(store, "flow_runs", deleted)
        gone = set(deleted)
        others = [i for i in state_before if i not in gone]
        if others:
            progress.message(f"refreshing {len(others)} runs from the server")
            try:
                for key, n in refresh_runs(client, store, others).items():
                    result.refreshed[key] = result.refreshed.get(key, 0) + n
            except FlowsyncError as e:
                result.errors.append(f"refresh after apply failed: {e}; run `flowsync pull` to re-check.")
            else:
                audit.record_outcomes(store, result.apply_id, _resolve_unanswered(store, unanswered))
    counts = audit.outcome_counts(store, result.apply_id)
    for (rule, outcome), n in sorted(counts.items()):
        result.counts.setdefault(rule, {})[outcome] = n
    result.seconds = time.monotonic() - began
    return result
