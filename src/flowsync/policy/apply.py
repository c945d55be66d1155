"""Applying a confirmed plan: every batch re-checked against the server right before its call.

Owns: the loop over batches (one rule, at most 50 ids) and, per batch:

1. re-read the batch's runs by id (one request) and write them to the file;
2. decide again over the file as it now is (``plan.decide``/``recheck``: the
   rule's SQL, protect_tags, keep_newest, limit, earlier rules, max_actions)
   and send only runs that decision still gives to the same rule. The file
   changes only where apply writes it, so while a batch's fresh read changes
   none of its rows, the last decision stands (for at most 30 s, for rules
   that use ``now()``); the confirmed plan bounds
   the batch, so nothing it did not hold is ever sent. Runs gone from the
   server are ``gone``, runs the re-check dropped are ``skipped`` with the check
   and what changed; neither is sent;
3. one bulk call per fresh state type: explicit ``id.any_`` (at most 50), and
   that state type as the server-side guard (``state.type.any_``);
4. classify every run once into an ``Outcome``: from the server's per-run
   answer; or, when the answer is lost in transit (5xx, dropped connection,
   timeout, unreadable body: ``UncertainError``), from a read of the sent runs
   (gone after being present right before: deleted by this apply; a new state
   of the requested type: accepted). Only runs the server shows untouched are
   re-checked and sent again, at most ``attempts`` calls in all (default: the
   client's retry attempts, with its backoff).

Each run has one ``policy_actions`` row per apply: inserted ``pending`` before
its call (or with its final outcome if never sent) and updated once with the
outcome. A failed batch does not stop the next one; a server that cannot be
read stops the apply. Must not: select runs (that is ``plan``), print, or
import httpx/duckdb.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    UncertainError,
)
from flowsync.policy.model import LoadedPolicy, SetStateRule
from flowsync.policy.plan import Plan, RuleModel, decide, make_plan, recheck, selected_ids
from flowsync.policy.result import SET_STATE_STATUS, ApplyResult, Outcome, RunResult
from flowsync.store import Store, audit, synced_tables
from flowsync.sync import NullProgress, Progress, RunReader, refresh_runs

__all__ = [
    "ApplyResult",
    "Batch",
    "Outcome",
    "Seen",
    "apply_plan",
    "batches",
    "check_guards",
    "refresh_plan",
]

# A decision over an unchanged file is reused this long; rules that use now() move with the clock.
DECISION_MAX_AGE = 30.0

# Columns compared to say what changed on the server when the re-check drops a run.
WATCHED = (
    "name",
    "tags",
    "state_type",
    "state_name",
    "deployment_id",
    "flow_id",
    "parameters",
    "job_variables",
    "expected_start_time",
    "labels",
)


@dataclass(frozen=True)
class Batch:
    rule: RuleModel
    state_type: str  # every run in the batch had this state type when planned
    ids: list[str]


def batches(plan: Plan, size: int = BULK_LIMIT) -> Iterator[Batch]:
    """Per rule, per planned state type, chunks of at most ``size`` ids (never empty)."""
    size = max(1, min(size, BULK_LIMIT))
    for rule_plan in plan.rules:
        by_type: dict[str, list[str]] = {}
        for run in rule_plan.runs:
            by_type.setdefault(run.state_type, []).append(run.id)
        for state_type, ids in by_type.items():
            for i in range(0, len(ids), size):
                yield Batch(rule_plan.rule, state_type, ids[i : i + size])


def check_guards(plan: Plan) -> None:
    """max_actions and protect_tags on the confirmed plan, before any API call."""
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
                raise PolicyError(
                    f"run {run.id} has a protected tag but was planned; refusing to apply."
                )


# -- classification ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A run's state as one read from the server showed it."""

    state_type: str | None
    state_id: str | None
    state_name: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Seen:
        state = row.get("state") or {}
        return cls(
            state_type=row.get("state_type") or state.get("type"),
            state_id=str(row.get("state_id") or state.get("id") or "") or None,
            state_name=row.get("state_name") or state.get("name"),
        )


def classify_lost(
    action: str,
    requested: str | None,
    before: Seen,
    after: Seen | None,
    history: list[dict[str, Any]] | None = None,
) -> RunResult | None:
    """A run whose call's answer was lost: what the server shows now says what happened.

    ``before`` is the read right before the call, ``after`` the read after it
    (None: gone); ``history`` the run's states, oldest first, for a set_state
    run that now holds another state. None means the server shows the run
    untouched: it may be sent again.
    """
    lost = "the call's answer was lost"
    if after is None:
        if action == "delete":
            return RunResult(
                Outcome.DELETED,
                {"evidence": f"present right before the call, gone after it ({lost})"},
            )
        return RunResult(
            Outcome.GONE, {"reason": "deleted on the server during the call, not by this apply"}
        )
    if after.state_id == before.state_id:
        return None
    if action == "set_state" and after.state_type == requested:
        return RunResult(
            Outcome.ACCEPTED,
            {
                "evidence": f"a new {after.state_type} state after the call ({lost})",
                "state": {"type": after.state_type, "name": after.state_name},
            },
        )
    if action == "set_state" and history is None:
        return RunResult(
            Outcome.PENDING,
            {
                "reason": f"its state changed during the call ({before.state_type} -> {after.state_type}) and its "
                "state history could not be read to tell whether this apply did it; check it, then run "
                f"apply again ({lost})",
            },
        )
    if action == "set_state" and _took(history or [], before.state_id, requested):
        return RunResult(
            Outcome.ACCEPTED,
            {
                "evidence": f"its state history holds the requested {requested} state after the one it had "
                f"before the call ({lost}); it has since moved on to {after.state_type}",
                "state_type_now": after.state_type,
            },
        )
    return RunResult(
        Outcome.SKIPPED,
        {
            "reason": f"its state changed during the call ({before.state_type} -> {after.state_type}) "
            "but not as requested; not sent again",
            "check": "state guard",
            "state_type_now": after.state_type,
        },
    )


def _took(history: list[dict[str, Any]], before_id: str | None, requested: str | None) -> bool:
    """Whether a state of the requested type follows the state the run had before the call."""
    ids = [str(s.get("id")) for s in history]
    if before_id not in ids:
        return False
    return any(s.get("type") == requested for s in history[ids.index(before_id) + 1 :])


def classify_unanswered(before: Seen, after: Seen | None) -> RunResult:
    """A run the server's answer did not act on: why, from a read after the call."""
    if after is None:
        return RunResult(
            Outcome.GONE, {"reason": "deleted on the server between the re-read and the call"}
        )
    if after.state_id != before.state_id:
        return RunResult(
            Outcome.SKIPPED,
            {
                "reason": f"its state changed between the re-read and the call ({before.state_type} -> "
                f"{after.state_type}); the state guard held",
                "check": "state guard",
                "state_type_now": after.state_type,
            },
        )
    return RunResult(Outcome.FAILED, {"reason": "the server did not act on it; run apply again"})


def _answered(
    rule: RuleModel, ids: list[str], answer: dict[str, Any]
) -> tuple[dict[str, RunResult], list[str]]:
    """The runs the server's answer acted on (or refused), and notes on anything odd in it."""
    if isinstance(rule, SetStateRule):
        results = answer.get("results")
        if not isinstance(results, list):
            raise ApiError("POST /flow_runs/bulk_set_state answered without a `results` list.")
        out: dict[str, RunResult] = {}
        notes = []
        for item in results:
            run_id = str(item.get("flow_run_id"))
            if run_id not in ids:
                notes.append(f"server answered for a run that was not asked for: {run_id}")
                continue
            status = str(item.get("status"))
            state = item.get("state") or {}
            out[run_id] = RunResult(
                SET_STATE_STATUS.get(status, Outcome.FAILED),
                {
                    "status": status,
                    "details": item.get("details"),
                    "state": {"type": state.get("type"), "name": state.get("name")}
                    if state
                    else None,
                },
            )
        return out, notes
    deleted = answer.get("deleted")
    if not isinstance(deleted, list):
        raise ApiError("POST /flow_runs/bulk_delete answered without a `deleted` list.")
    got = {str(i) for i in deleted}
    stray = sorted(got.difference(ids))
    notes = [f"server reported deleting runs that were not asked for: {stray}"] if stray else []
    return {i: RunResult(Outcome.DELETED) for i in ids if i in got}, notes


def _changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, list[Any]]:
    if not before or not after:
        return {}
    return {c: [before[c], after[c]] for c in WATCHED if before.get(c) != after.get(c)}


def _file_rows(store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The watched columns of these runs' rows in the file."""
    if not ids:
        return {}
    cols = ", ".join(
        f"CAST({c} AS VARCHAR) AS {c}"
        if c.endswith("_id") or c in ("parameters", "job_variables", "labels")
        else c
        for c in WATCHED
    )
    _, rows = store.execute(
        f"SELECT CAST(id AS VARCHAR) AS id, {cols} FROM flow_runs WHERE id IN (SELECT unnest(CAST(? AS UUID[])))",
        [ids],
    ).dicts()
    return {r["id"]: r for r in rows}


# -- the loop -------------------------------------------------------------------------------


class _Stop(Exception):
    """The server cannot be read: no further batch can be checked."""


class _Applier:
    def __init__(
        self, client: PrefectClient, store: Store, plan: Plan, progress: Progress, attempts: int
    ) -> None:
        self.client, self.store, self.plan, self.progress = client, store, plan, progress
        self.attempts = max(1, attempts)
        self.result = ApplyResult(apply_id=str(uuid.uuid4()), policy_sha256=plan.policy.sha256)
        self.reader = RunReader(client, store, "apply")
        self.recorded: set[str] = set()  # runs with a policy_actions row in this apply
        self.refresh: list[str] = []  # runs changed by an answer (not re-read since)
        self.deleted: list[str] = []  # runs the server deleted, to mark in the file
        self.current: Plan | None = None  # the last decision over the file
        self.decided_at = 0.0
        self.file_changed = False  # a read wrote the file since the last decision

    def decision(self) -> Plan:
        """The whole policy decided again over the file; reused while no read has changed
        the file since, for at most ``DECISION_MAX_AGE`` seconds (rules may use ``now()``)."""
        stale = time.monotonic() - self.decided_at > DECISION_MAX_AGE
        if self.current is None or self.file_changed or stale:
            self.current = decide(self.store, self.plan)
            self.decided_at = time.monotonic()
            self.file_changed = False
            self.result.decisions += 1
        return self.current

    def read(
        self, ids: list[str], before_write: Callable[[list[str]], None] | None = None
    ) -> dict[str, Seen]:
        self.result.rereads += 1
        rows = self.reader.read(ids, before_write)
        self.file_changed = self.file_changed or bool(self.reader.changed)
        return {i: Seen.of(row) for i, row in rows.items()}

    def _history(self, run_id: str) -> list[dict[str, Any]] | None:
        try:
            return self.client.flow_run_states(run_id)
        except ApiError:
            return (
                None  # without it the run is not counted as changed by this apply, and not resent
            )

    def insert(self, number: int, batch: Batch, runs: list[tuple[str, str, str, Any]]) -> None:
        rule = batch.rule
        audit.record_runs(
            self.store,
            apply_id=self.result.apply_id,
            batch=number,
            api_url=self.client.settings.display_url,
            policy_path=self.plan.policy.source,
            policy_sha256=self.plan.policy.sha256,
            rule=rule.name,
            action=rule.action,
            requested_state=_requested(rule),
            runs=runs,
        )
        self.recorded.update(r[0] for r in runs)

    def settle(
        self, number: int, batch: Batch, final: dict[str, RunResult], guard: dict[str, str | None]
    ) -> None:
        """Write each run's one outcome: update its pending row, or insert it if it was never sent."""
        new = [
            (i, guard.get(i) or batch.state_type, r.outcome.value, r.details)
            for i, r in final.items()
            if i not in self.recorded
        ]
        self.insert(number, batch, new)
        audit.record_outcomes(
            self.store,
            self.result.apply_id,
            {
                i: (r.outcome.value, r.details)
                for i, r in final.items()
                if i not in {n[0] for n in new}
            },
        )
        # Marked in the file once, at the end: deleting chosen runs cannot change what the
        # policy decides for the others (they only free limits and ranks below the kept ones).
        self.deleted += [i for i, r in final.items() if r.outcome is Outcome.DELETED]
        for r in final.values():
            self.result.add(batch.rule.name, r.outcome)

    def run_batch(self, number: int, batch: Batch) -> None:
        rule = batch.rule
        requested = rule.state.type if isinstance(rule, SetStateRule) else None
        todo = list(batch.ids)
        file_before: dict[
            str, dict[str, Any]
        ] = {}  # rows the fresh read is about to change, as they were

        def keep_before(ids: list[str]) -> None:
            file_before.update(_file_rows(self.store, ids))

        try:
            fresh = self.read(todo, keep_before)
        except AuthError:
            raise
        except ApiError as e:
            self._not_checked(number, batch, todo, e)
            raise _Stop from e
        lost: dict[str, str] = {}  # run -> what went wrong with a call whose answer was lost
        for attempt in range(1, self.attempts + 1):
            final: dict[str, RunResult] = {}
            # The file changes only where this apply writes it: the rows of this batch's
            # fresh read that differed (and, on a resend, the read after the lost answer).
            verdicts = recheck(self.decision(), self.plan, rule, todo)
            dropped = [i for i in todo if i in fresh and verdicts[i] is not None]
            file_now = _file_rows(self.store, dropped)
            groups: dict[str, list[str]] = {}
            for i in todo:
                if i not in fresh:
                    final[i] = RunResult(
                        Outcome.GONE,
                        {"reason": "not on the server right before the call; not sent"},
                    )
                elif verdicts[i] is not None:
                    final[i] = RunResult(
                        Outcome.SKIPPED,
                        {
                            "reason": f"re-checked right before the call: {verdicts[i]}; not sent",
                            "check": verdicts[i],
                            "changes": _changes(file_before.get(i), file_now.get(i)),
                            "state_type_now": fresh[i].state_type,
                        },
                    )
                else:
                    groups.setdefault(str(fresh[i].state_type), []).append(i)
            final = {i: _noting_lost(r, lost.get(i)) for i, r in final.items()}
            guard = {i: fresh[i].state_type if i in fresh else None for i in todo}
            again: list[str] = []
            try:
                for state_type, ids in groups.items():
                    final.update(
                        self.call(
                            number, batch, state_type, ids, fresh, requested, again, lost, attempt
                        )
                    )
            except _Stop:
                self.settle(
                    number, batch, final, guard
                )  # what is known is recorded; the rest stays pending
                raise
            if again and attempt < self.attempts:
                self.settle(number, batch, final, guard)
                todo = again
                self.client.pause(attempt - 1)  # the first resend waits as a first retry would
                continue
            for i in again:
                final[i] = RunResult(
                    Outcome.FAILED,
                    {
                        "reason": f"the answer was lost {attempt} times and the server shows the run unchanged; "
                        "run apply again",
                        "error": lost.get(i),
                    },
                )
            if again:
                message = (
                    f"batch {number} ({rule.name}): {len(again)} runs not done: the server's answer was "
                    f"lost {attempt} times ({lost[again[0]]}) and it shows them unchanged"
                )
                self.result.errors.append(message)
                self.progress.message(message)
            self.settle(number, batch, final, guard)
            break
        self.progress.advance(len(batch.ids))

    def call(
        self,
        number: int,
        batch: Batch,
        state_type: str,
        ids: list[str],
        fresh: dict[str, Seen],
        requested: str | None,
        again: list[str],
        lost: dict[str, str],
        attempt: int,
    ) -> dict[str, RunResult]:
        """One bulk call for runs that all have ``state_type`` now; their outcomes (``again``: resend)."""
        rule = batch.rule
        self.insert(
            number,
            batch,
            [(i, state_type, Outcome.PENDING.value, None) for i in ids if i not in self.recorded],
        )
        self.result.calls += 1
        try:
            if isinstance(rule, SetStateRule):
                answer = self.client.bulk_set_state(
                    ids, rule.state.to_api(), force=rule.force, state_types=[state_type]
                )
            else:
                answer = self.client.bulk_delete(ids, state_types=[state_type])
            acted, notes = _answered(rule, ids, answer)
        except UncertainError as e:
            self.progress.message(
                f"batch {number} ({rule.name}): {e} Reading the runs to see what happened."
            )
            try:
                after = self.read(ids)
            except ApiError as read_error:
                message = f"batch {number} ({rule.name}): answer lost ({e.problem}) and the runs cannot be read: {read_error}"
                self.result.errors.append(
                    message + "; `flowsync pull`, then check policy_actions rows left pending."
                )
                audit.record_outcomes(
                    self.store,
                    self.result.apply_id,
                    {i: (Outcome.PENDING.value, {"error": message}) for i in ids},
                )
                self.result.add(rule.name, Outcome.PENDING, len(ids))
                raise _Stop from read_error
            out: dict[str, RunResult] = {}
            for i in ids:
                lost[i] = f"attempt {attempt}: {e.problem}"
                now = after.get(i)
                history = None
                if (
                    requested
                    and now is not None
                    and now.state_id != fresh[i].state_id
                    and now.state_type != requested
                ):
                    history = self._history(i)  # did our state come in between? (one request, rare)
                verdict = classify_lost(rule.action, requested, fresh[i], now, history)
                if verdict is None:
                    again.append(i)
                    fresh[i] = after[i]
                else:
                    out[i] = verdict
            return out
        except AuthError as e:
            audit.record_outcomes(
                self.store,
                self.result.apply_id,
                {i: (Outcome.FAILED.value, {"error": str(e)}) for i in ids},
            )
            raise
        except ApiError as e:
            message = f"batch {number} ({rule.name}, {len(ids)} runs): {e}"
            self.result.errors.append(message)
            self.progress.message(message)
            return {i: RunResult(Outcome.FAILED, {"error": str(e)}) for i in ids}
        self.result.errors.extend(notes)
        self.refresh.extend(i for i in acted if acted[i].outcome is not Outcome.DELETED)
        missing = [i for i in ids if i not in acted]
        if missing:
            try:
                after = self.read(missing)
            except ApiError as read_error:
                acted.update(
                    {
                        i: RunResult(
                            Outcome.FAILED,
                            {
                                "reason": "the server did not act on it, and it could not be read to tell why",
                                "error": str(read_error),
                            },
                        )
                        for i in missing
                    }
                )
            else:
                acted.update({i: classify_unanswered(fresh[i], after.get(i)) for i in missing})
        return {i: _noting_lost(r, lost.get(i)) for i, r in acted.items()}

    def _not_checked(self, number: int, batch: Batch, ids: list[str], e: ApiError) -> None:
        message = (
            f"batch {number} ({batch.rule.name}): cannot re-read its runs before the call: {e}"
        )
        self.result.errors.append(message + "; stopped, nothing more sent. Run apply again.")
        self.progress.message(message)
        self.settle(
            number,
            batch,
            {
                i: RunResult(
                    Outcome.FAILED,
                    {
                        "reason": "could not be re-read right before the call; not sent",
                        "error": str(e),
                    },
                )
                for i in ids
            },
            {},
        )


def _noting_lost(result: RunResult, lost: str | None) -> RunResult:
    """The audit of a run sent again after a lost answer says so."""
    if lost is None:
        return result
    return RunResult(result.outcome, {**(result.details or {}), "after_lost_answer": lost})


def _requested(rule: RuleModel) -> dict[str, Any] | None:
    if isinstance(rule, SetStateRule):
        return {"state": rule.state.to_api(), "force": rule.force}
    return None


def refresh_plan(client: PrefectClient, store: Store, loaded: LoadedPolicy) -> Plan:
    """Re-read every run the rules select from the server into the file, then plan again.

    So what ``plan --refresh`` prints is what ``apply`` would do now. Writes only
    the file's copy of those runs (and marks the ones gone); never the server.
    """
    if not store.sandboxed or store.read_only:
        raise StoreError(
            f"{store.path}: plan --refresh needs the file open writable and sandboxed."
        )
    ids = selected_ids(make_plan(store, loaded))
    reader = RunReader(client, store, "plan-refresh")
    try:
        reader.read(ids)
    except BaseException as e:
        with contextlib.suppress(Exception):
            reader.finish(error=str(e))
        raise
    reader.finish()
    plan = make_plan(store, loaded)
    plan.refreshed = len(ids)
    return plan


def apply_plan(
    client: PrefectClient,
    store: Store,
    plan: Plan,
    *,
    progress: Progress | None = None,
    batch_size: int = BULK_LIMIT,
    refresh: bool = True,
    attempts: int | None = None,
) -> ApplyResult:
    """Send the confirmed plan's batches, each re-checked right before its call; classify every run once."""
    check_guards(plan)
    if store.read_only:
        raise StoreError(f"{store.path} is open read-only; apply needs to write its audit rows.")
    if not store.sandboxed:
        raise StoreError(
            f"{store.path} is not open sandboxed; apply re-runs rule SQL on it (Store.open(..., sandbox=True))."
        )
    progress = progress or NullProgress()
    began = time.monotonic()
    # As many calls per run as the client's retry policy allows a read: each resend
    # follows a read showing the runs untouched, with the same backoff.
    applier = _Applier(client, store, plan, progress, attempts or client.retry.attempts)
    result = applier.result
    progress.phase("apply", total=plan.total)
    failure: str | None = None
    try:
        for number, batch in enumerate(batches(plan, batch_size), 1):
            result.batches = number
            applier.run_batch(number, batch)
    except _Stop:
        pass
    except BaseException as e:
        failure = f"{type(e).__name__}: {e}"
        raise
    finally:
        # An original error matters more than the bookkeeping.
        if applier.deleted:
            with contextlib.suppress(Exception), store.transaction():
                result.refreshed["marked_deleted"] = synced_tables.mark_deleted(
                    store, "flow_runs", applier.deleted
                )
        with contextlib.suppress(Exception):
            applier.reader.finish(error=failure)
    if refresh and applier.refresh:
        # Runs the answer changed: the file should show their new state.
        progress.message(f"refreshing {len(applier.refresh)} runs from the server")
        try:
            for key, n in refresh_runs(client, store, applier.refresh).items():
                result.refreshed[key] = result.refreshed.get(key, 0) + n
        except FlowsyncError as e:
            result.errors.append(
                f"refresh after apply failed: {e}; run `flowsync pull` to re-check."
            )
    result.seconds = time.monotonic() - began
    return result
