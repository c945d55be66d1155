"""Applying a confirmed plan: every call decided on the server as it is right before it.

Owns the sequence of one batch (one rule, one planned state type, at most 50
runs), each step a function with typed inputs and outputs:

1. ``reread``: read from the server every run the decision rests on and write
   what changed to the file: the batch's runs; for rules ranked by
   ``keep_newest``, the runs that outrank them in their deployments (read until
   every run the decision keeps was read in this step); for rules whose SQL
   reads other runs, every run with a state change since the last pull
   (state events). A run the server no longer has is marked deleted.
2. ``decide``: the policy decided again over the file for these runs
   (``plan.decide_scope``: rule SQL, protect_tags, keep_newest, earlier rules);
   the confirmed plan bounds it, so nothing the plan did not hold is ever sent.
   Runs not sent get their final outcome at once: ``gone`` or ``skipped`` with
   the check and what changed (or, for a run an earlier call of this apply may
   have changed, what the evidence says: ``deleted``/``accepted``).
3. ``send``: one call per fresh state type, explicit ``id.any_`` (<= 50) and
   that state type as the server-side guard. The transport never sends it
   twice.
4. ``classify``: the answer, run by run. The server's per-run answer; or a
   throttle / a connection never made (``NotSentError``): nothing happened,
   wait as told and go back to step 1; or a lost answer (``UncertainError``:
   5xx, dropped connection, timeout): read the runs until they show the
   change or stay unchanged for ``settle_seconds`` (after a timeout or a
   dropped connection the server may still be working on the first call; after
   a 5xx it has finished, and one read settles it), then what changed is
   attributed to this apply, and only runs still unchanged go back to step 1.
5. ``record``: the ``Ledger`` writes each outcome, and the file marks the
   runs deleted (or re-reads the runs set) in the same transaction, before the
   next batch is decided.

Runs a killed apply left ``pending`` are read back and settled under the apply
that sent them when the next apply starts (``resolve_earlier``). A failed batch
does not stop the next one; a server that cannot be read stops the apply.
The values passed between the steps and the classification of each run live in
``policy/answers.py``. Must not: select runs (that is ``plan``), print, or import
httpx/duckdb.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from flowsync.api import PrefectClient
from flowsync.api.client import BULK_LIMIT
from flowsync.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    NotSentError,
    PolicyError,
    PolicyLimitError,
    ThrottledError,
    UncertainError,
    UnsupportedError,
)
from flowsync.policy.answers import (
    Acted,
    Answer,
    Call,
    Decided,
    Fresh,
    Lost,
    Partial,
    Refused,
    Seen,
    Throttled,
    Verdict,
    answered,
    changes,
    classify_lost,
    classify_unanswered,
    file_rows,
    with_lost,
)
from flowsync.policy.ledger import Ledger
from flowsync.policy.model import SetStateRule
from flowsync.policy.plan import (
    Decision,
    Plan,
    RuleModel,
    Scope,
    decide_scope,
)
from flowsync.policy.result import SET_STATE_STATUS, ApplyResult, Outcome, RunResult
from flowsync.store import SandboxedWriter, Writer, audit, sync_log, synced_tables
from flowsync.sync import NullProgress, Progress, RunReader

__all__ = [
    "ApplyResult",
    "Batch",
    "apply_plan",
    "batches",
    "check_guards",
    "new_result",
    "reread_runs",
]

# How long a call whose answer was lost may still be running on the server: its runs are
# read until they change or stay unchanged this long (Prefect's own statement timeout is
# 10 s by default, PREFECT_SERVER_DATABASE_TIMEOUT).
SETTLE_SECONDS = 30.0
# On a server without the bulk endpoints, runs re-read per decision: each run's call follows
# the re-read within a few per-run calls.
PER_RUN_BATCH = 10
# The longest wait a throttled call is given before it is re-checked and sent again.
MAX_THROTTLE_WAIT = 120.0
# State events reach the server's store a few seconds late: a catch-up re-reads this far back.
EVENTS_OVERLAP = timedelta(minutes=2)


@dataclass(frozen=True)
class Batch:
    rule: RuleModel
    state_type: str  # every run in the batch had this state type when planned
    ids: list[str]
    deployments: dict[str, str | None] = field(default_factory=dict)  # run -> its deployment


def batches(plan: Plan, size: int = BULK_LIMIT) -> Iterator[Batch]:
    """Per rule, per planned state type, chunks of at most ``size`` ids (never empty)."""
    size = max(1, min(size, BULK_LIMIT))
    for rule, state_type, chunk in plan.batches(size):  # read from the plan's store, page by page
        yield Batch(rule, state_type, [run_id for run_id, _ in chunk], dict(chunk))


def check_guards(plan: Plan) -> None:
    """max_actions and protect_tags on the confirmed plan, before any API call."""
    policy = plan.policy.policy
    if plan.over_max:
        raise PolicyLimitError(
            f"{plan.policy.source}: the rules select {plan.total} runs, more than max_actions "
            f"({policy.max_actions}); narrow the rules, add a per-rule limit, or raise max_actions."
        )
    protected = plan.protected_run(list(policy.protect_tags))
    if protected is not None:
        raise PolicyError(
            f"run {protected} has a protected tag but was planned; refusing to apply."
        )


def _requested(rule: RuleModel) -> dict[str, Any] | None:
    if isinstance(rule, SetStateRule):
        return {"state": rule.state.to_api(), "force": rule.force}
    return None


class _Stop(Exception):
    """The server cannot be read, or refuses every call: no further batch can be checked."""


# -- the applier ------------------------------------------------------------------------------


class _Applier:
    def __init__(
        self,
        client: PrefectClient,
        store: SandboxedWriter,
        plan: Plan,
        progress: Progress,
        attempts: int,
        settle_seconds: float,
        result: ApplyResult,
    ) -> None:
        self.client, self.store, self.plan, self.progress = client, store, plan, progress
        self.attempts = max(1, attempts)
        self.settle_seconds = settle_seconds
        self.result = result
        self.ledger = Ledger(
            store,
            self.result,
            api_url=client.settings.display_url,
            policy_path=plan.policy.source,
            policy_sha256=plan.policy.sha256,
        )
        self.reader = RunReader(client, store, "apply")
        self.lost: dict[str, tuple[str, Seen]] = {}  # run -> (problem, state before that call)
        self.ranked = self._ranked_rules()
        self.per_run = False  # the server lacks the bulk endpoints: one call per run
        self.caught_up: datetime | None = (
            None  # state events read up to here (rules reading others)
        )

    def _ranked_rules(self) -> set[str]:
        """Rules whose decision ranks runs against each other: keep_newest at or before them."""
        out, seen_keep = set(), False
        for rule in self.plan.policy.policy.rules:
            seen_keep = seen_keep or (rule.enabled and rule.keep_newest is not None)
            if seen_keep:
                out.add(rule.name)
        return out

    def _reads_others(self, rule: RuleModel) -> bool:
        names = [r.name for r in self.plan.policy.policy.rules]
        upto = names[: names.index(rule.name) + 1]
        return any(n in self.plan.reads_other_runs for n in upto)

    # 1. read ------------------------------------------------------------------------------

    def _read(self, ids: list[str], before: dict[str, dict[str, Any]]) -> dict[str, Seen]:
        self.result.rereads += 1

        def keep_before(changed: list[str]) -> None:
            before.update(
                {k: v for k, v in file_rows(self.store, changed).items() if k not in before}
            )

        rows = self.reader.read(ids, keep_before)
        return {i: Seen.of(row) for i, row in rows.items()}

    def _catch_up(self) -> None:
        """Re-read every run in the file with a state change since the last catch-up (or pull)."""
        now = datetime.now(timezone.utc)
        since = self.caught_up or sync_log.last_pull_at(self.store) or now - timedelta(days=6)
        since = max(since - EVENTS_OVERLAP, now - timedelta(days=6))
        changed = self.client.changed_flow_runs(since, now + timedelta(minutes=5))
        known = synced_tables.existing_ids(self.store, "flow_runs", list(changed))
        if known:
            self._read(sorted(known), {})
        self.caught_up = now

    def reread(self, batch: Batch, todo: list[str]) -> Fresh:
        """Step 1: the server's current rows for every run the decision rests on, into the file."""
        before: dict[str, dict[str, Any]] = {}
        if self._reads_others(batch.rule):
            self._catch_up()
        want = set(todo)
        if batch.rule.name in self.ranked:
            # The runs that outrank the batch as the file says now; read with the batch.
            want |= self._decide(batch, todo).ranked_above
        seen: dict[str, Seen] = {}
        read: set[str] = set()
        for _ in range(8):
            got = self._read(sorted(want - read), before)
            answered = time.monotonic()
            read |= want
            seen.update(got)
            for gone in want - set(got):
                seen.pop(gone, None)
            decision = self._decide(batch, todo)
            # Reads may have moved the ranks: read what the decision now keeps, until it was all read.
            want = set(decision.ranked_above) - read
            if not want:
                break
        return Fresh({i: seen[i] for i in todo if i in seen}, before, answered, decision)

    # 2. decide ----------------------------------------------------------------------------

    def _decide(self, batch: Batch, todo: list[str]) -> Decision:
        self.result.decisions += 1
        deployments = tuple(sorted({batch.deployments.get(i) for i in todo}, key=str))
        scope = Scope(tuple(todo), deployments if batch.rule.name in self.ranked else ())
        return decide_scope(self.store, self.plan, batch.rule, scope)

    def decide(self, batch: Batch, todo: list[str], fresh: Fresh) -> Decided:
        """Step 2: what to send, from the decision made over the file after the fresh read."""
        reasons = fresh.decision.reasons
        dropped = [i for i in todo if i in fresh.seen and reasons[i] is not None]
        file_now = file_rows(self.store, dropped)
        final: dict[str, RunResult] = {}
        groups: dict[str, list[str]] = {}
        for i in todo:
            lost = self.lost.get(i)
            if lost is not None and (i not in fresh.seen or reasons[i] is not None):
                # An earlier call of this apply may have done it: the evidence decides.
                verdict = self._after_lost(batch.rule, i, lost[1], fresh.seen.get(i))
                if verdict is not None:
                    final[i] = with_lost(verdict, lost[0])
                    continue
            if i not in fresh.seen:
                final[i] = RunResult(
                    Outcome.GONE, {"reason": "not on the server right before the call; not sent"}
                )
            elif reasons[i] is not None:
                final[i] = RunResult(
                    Outcome.SKIPPED,
                    {
                        "reason": f"re-checked right before the call: {reasons[i]}; not sent",
                        "check": reasons[i],
                        "changes": changes(fresh.before.get(i), file_now.get(i)),
                        "state_type_now": fresh.seen[i].state_type,
                    },
                )
            else:
                groups.setdefault(str(fresh.seen[i].state_type), []).append(i)
        calls = [Call(state_type, ids) for state_type, ids in groups.items()]
        return Decided(
            calls, {i: with_lost(r, self.lost.get(i, (None,))[0]) for i, r in final.items()}
        )

    def _after_lost(
        self, rule: RuleModel, run_id: str, before: Seen, now: Seen | None
    ) -> RunResult | None:
        requested = rule.state.type if isinstance(rule, SetStateRule) else None
        return self._evidence(rule.action, requested, run_id, before, now)

    def _evidence(
        self, action: str, requested: str | None, run_id: str, before: Seen, now: Seen | None
    ) -> RunResult | None:
        """``classify_lost``, reading the run's state history when only it can tell
        whether the requested state came in between (one request, rare)."""
        history = None
        if (
            requested
            and now is not None
            and now.state_id != before.state_id
            and now.state_type != requested
        ):
            history = self._history(run_id)
        return classify_lost(action, requested, before, now, history)

    def _history(self, run_id: str) -> list[dict[str, Any]] | None:
        try:
            return self.client.flow_run_states(run_id)
        except ApiError:
            return None  # without it the run is not counted as changed by this apply, nor resent

    # 3. send ------------------------------------------------------------------------------

    def send(self, rule: RuleModel, call: Call, read_at: float) -> Answer:
        """Step 3: one call; whatever happens comes back as a typed answer (AuthError raises)."""
        if self.per_run:
            return self._send_per_run(rule, call, read_at)
        self.result.windows.append(time.monotonic() - read_at)
        self.result.calls += 1
        try:
            if isinstance(rule, SetStateRule):
                answer = self.client.bulk_set_state(
                    call.ids, rule.state.to_api(), force=rule.force, state_types=[call.state_type]
                )
            else:
                answer = self.client.bulk_delete(call.ids, state_types=[call.state_type])
            results, notes = answered(rule, call.ids, answer)
        except ThrottledError as e:
            return Throttled(e.retry_after, "HTTP 429")
        except NotSentError as e:
            return Throttled(None, str(e))
        except UncertainError as e:
            return Lost(e.problem, finished=e.status is not None)
        except AuthError:
            raise
        except ApiError as e:
            return Refused(e)
        return Acted(results, notes)

    def _send_per_run(self, rule: RuleModel, call: Call, read_at: float) -> Answer:
        """A server older than 3.6.16: one call per run, in the batch's order. DELETE has no
        state guard there; set_state keeps Prefect's orchestration rules (force is refused
        before any call)."""
        results: dict[str, RunResult] = {}
        for n, run_id in enumerate(call.ids):
            self.result.windows.append(time.monotonic() - read_at)
            self.result.calls += 1
            stopped: Throttled | Lost | Refused | None = None
            try:
                if isinstance(rule, SetStateRule):
                    answer = self.client.set_flow_run_state(
                        run_id, rule.state.to_api(), force=rule.force
                    )
                    state = answer.state or {}
                    results[run_id] = RunResult(
                        SET_STATE_STATUS.get(answer.status, Outcome.FAILED),
                        {
                            "status": answer.status,
                            "details": answer.details,
                            "state": {"type": state.get("type"), "name": state.get("name")}
                            if state
                            else None,
                            "path": "per-run",
                        },
                    )
                elif self.client.delete_flow_run(run_id).deleted:
                    results[run_id] = RunResult(Outcome.DELETED, {"path": "per-run"})
                # else: already gone; step 4 reads it back to say why
            except NotFoundError:
                pass  # set_state on a run that is gone: step 4 reads it back
            except ThrottledError as e:
                stopped = Throttled(e.retry_after, "HTTP 429")
            except NotSentError as e:
                stopped = Throttled(None, str(e))
            except UncertainError as e:
                stopped = Lost(e.problem, finished=e.status is not None)
            except AuthError:
                raise
            except ApiError as e:
                stopped = Refused(e)
            if stopped is not None:
                return Partial(results, n, stopped)
        return Acted(results, [])

    # 4. classify --------------------------------------------------------------------------

    def classify(
        self, number: int, rule: RuleModel, call: Call, fresh: Fresh, answer: Answer, attempt: int
    ) -> Verdict:
        if isinstance(answer, Partial):
            # The runs answered, then the one call that stopped, then the runs never sent.
            done = self.classify(
                number,
                rule,
                Call(call.state_type, call.ids[: answer.stopped_at]),
                fresh,
                Acted(answer.results, []),
                attempt,
            )
            stopped = self.classify(
                number,
                rule,
                Call(call.state_type, [call.ids[answer.stopped_at]]),
                fresh,
                answer.answer,
                attempt,
            )
            rest = call.ids[answer.stopped_at + 1 :]
            return Verdict(
                {**done.results, **stopped.results},
                done.again + stopped.again + rest,
                stopped.wait,
                stopped.stop,
            )
        if isinstance(answer, Throttled):
            self.progress.message(
                f"batch {number} ({rule.name}): not carried out ({answer.problem}); "
                "waiting, then re-checking before sending again"
            )
            return Verdict({}, list(call.ids), wait=answer.wait)
        if isinstance(answer, Refused):
            message = f"batch {number} ({rule.name}, {len(call.ids)} runs): {answer.error}"
            self.result.errors.append(message)
            self.progress.message(message)
            results = {i: RunResult(Outcome.FAILED, {"error": str(answer.error)}) for i in call.ids}
            stop = str(answer.error) if isinstance(answer.error, UnsupportedError) else None
            return Verdict(results, stop=stop)
        if isinstance(answer, Lost):
            return self._settle_lost(number, rule, call, fresh, answer, attempt)
        self.result.errors.extend(answer.notes)
        acted = dict(answer.results)
        missing = [i for i in call.ids if i not in acted]
        if missing:
            try:
                after = self._read(missing, {})
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
                for i in missing:
                    lost = self.lost.get(i)
                    earlier = self._after_lost(rule, i, lost[1], after.get(i)) if lost else None
                    acted[i] = earlier or classify_unanswered(fresh.seen[i], after.get(i))
        return Verdict({i: with_lost(r, self.lost.get(i, (None,))[0]) for i, r in acted.items()})

    def _settle_lost(
        self, number: int, rule: RuleModel, call: Call, fresh: Fresh, answer: Lost, attempt: int
    ) -> Verdict:
        """The answer was lost: read until every run shows the change or stays unchanged for
        ``settle_seconds`` (the first call may still be running); never resend before. A
        server that answered (5xx) has finished with the call: one read settles it."""
        self.progress.message(
            f"batch {number} ({rule.name}): the answer was lost ({answer.problem}); "
            "reading the runs until the server settles"
        )
        for i in call.ids:
            self.lost.setdefault(i, (f"attempt {attempt}: {answer.problem}", fresh.seen[i]))
        waited, delay = 0.0, 0.5  # the client's clock: time spent waiting, reads not counted
        results: dict[str, RunResult] = {}
        untouched = list(call.ids)
        while True:
            try:
                after = self._read(untouched, {})
            except ApiError as read_error:
                message = (
                    f"batch {number} ({rule.name}): answer lost ({answer.problem}) and the runs "
                    f"cannot be read: {read_error}"
                )
                self.result.errors.append(
                    message + "; the next apply settles the runs left pending."
                )
                results.update(
                    {i: RunResult(Outcome.PENDING, {"error": message}) for i in untouched}
                )
                return Verdict(results, stop=message)
            still = []
            for i in untouched:
                verdict = self._after_lost(rule, i, self.lost[i][1], after.get(i))
                if verdict is None:
                    still.append(i)
                else:
                    results[i] = with_lost(verdict, self.lost[i][0])
            untouched = still
            if not untouched or answer.finished or waited >= self.settle_seconds:
                break
            pause = min(delay, self.settle_seconds - waited)
            self.client.pause_for(pause)
            waited += pause
            delay = min(delay * 2, 5.0)
        return Verdict(results, again=untouched)

    # 5. record ----------------------------------------------------------------------------

    def record(
        self, number: int, rule: RuleModel, results: dict[str, RunResult], guards: dict[str, str]
    ) -> None:
        deleted = [i for i, r in results.items() if r.outcome is Outcome.DELETED]

        def mark_deleted() -> None:
            n = synced_tables.mark_deleted(self.store, "flow_runs", deleted)
            self.result.refreshed["marked_deleted"] = (
                self.result.refreshed.get("marked_deleted", 0) + n
            )

        self.ledger.final(
            number, rule.name, rule.action, _requested(rule), results, guards, also=mark_deleted
        )
        accepted = [i for i, r in results.items() if r.outcome is Outcome.ACCEPTED]
        if accepted:
            # The file shows the state this apply set before the next batch is decided.
            try:
                self._read(accepted, {})
            except ApiError as e:
                self.result.errors.append(
                    f"re-reading the {len(accepted)} runs set in batch {number} failed: {e}; "
                    "`flowsync pull` brings the file up to date."
                )
            else:
                self.result.refreshed["updated"] = self.result.refreshed.get("updated", 0) + len(
                    accepted
                )

    # the sequence -------------------------------------------------------------------------

    def run_batch(self, number: int, batch: Batch) -> None:
        rule = batch.rule
        todo = list(batch.ids)
        for attempt in range(1, self.attempts + 1):
            try:
                fresh = self.reread(batch, todo)
            except AuthError:
                raise
            except ApiError as e:
                self._not_checked(number, batch, todo, e)
                raise _Stop from e
            decided = self.decide(batch, todo, fresh)
            guards = {i: s.state_type or batch.state_type for i, s in fresh.seen.items()}
            again: list[str] = []
            wait: float | None = None
            calls = list(decided.calls)
            if not calls:
                self.record(number, rule, decided.final, guards)
            while calls:
                call = calls.pop(0)
                self.ledger.pending(
                    number,
                    rule.name,
                    rule.action,
                    _requested(rule),
                    {i: call.state_type for i in call.ids},
                    {i: row for i in call.ids if (row := fresh.seen[i].row) is not None},
                )
                try:
                    answer = self.send(rule, call, fresh.answered_at)
                except AuthError as e:
                    if call is decided.calls[0]:
                        self.record(number, rule, decided.final, guards)
                    self._auth_failed(number, batch, call, calls, str(e))
                    raise
                verdict = self.classify(number, rule, call, fresh, answer, attempt)
                if decided.final and call is decided.calls[0]:
                    # The runs not sent are recorded after the first call, out of its window.
                    verdict = Verdict(
                        {**decided.final, **verdict.results},
                        verdict.again,
                        verdict.wait,
                        verdict.stop,
                    )
                self.record(number, rule, verdict.results, guards)
                if verdict.stop is not None:
                    self._not_sent(number, rule, [i for c in calls for i in c.ids], verdict.stop)
                    raise _Stop
                again += verdict.again
                throttled = answer.answer if isinstance(answer, Partial) else answer
                if isinstance(throttled, Throttled):
                    # Everything not sent yet goes back to step 1 after the wait.
                    again += [i for c in calls for i in c.ids]
                    wait = (
                        throttled.wait
                        if throttled.wait is not None
                        else self.client.backoff(attempt)
                    )
                    break
            if not again:
                break
            if attempt == self.attempts:
                self._gave_up(number, rule, again, attempt)
                break
            self.client.pause_for(min(wait if wait is not None else 0.0, MAX_THROTTLE_WAIT))
            todo = again
        self.progress.advance(len(batch.ids))

    def _gave_up(self, number: int, rule: RuleModel, ids: list[str], attempt: int) -> None:
        why = {i: self.lost[i][0] for i in ids if i in self.lost}
        results = {
            i: RunResult(
                Outcome.FAILED,
                {
                    "reason": f"not done after {attempt} attempts (throttled, or the answer lost while "
                    "the server shows the run unchanged); run apply again",
                    "error": why.get(i),
                },
            )
            for i in ids
        }
        self.record(number, rule, results, {})
        message = f"batch {number} ({rule.name}): {len(ids)} runs not done after {attempt} attempts"
        self.result.errors.append(message)
        self.progress.message(message)

    def _not_sent(self, number: int, rule: RuleModel, ids: list[str], why: str) -> None:
        if ids:
            self.record(
                number,
                rule,
                {
                    i: RunResult(Outcome.FAILED, {"reason": f"not sent: the apply stopped ({why})"})
                    for i in ids
                },
                {},
            )

    def _auth_failed(
        self, number: int, batch: Batch, call: Call, rest: list[Call], error: str
    ) -> None:
        self.record(
            number,
            batch.rule,
            {i: RunResult(Outcome.FAILED, {"error": error}) for i in call.ids},
            {},
        )
        self._not_sent(number, batch.rule, [i for c in rest for i in c.ids], error)

    def _not_checked(self, number: int, batch: Batch, ids: list[str], e: ApiError) -> None:
        message = (
            f"batch {number} ({batch.rule.name}): cannot re-read its runs before the call: {e}"
        )
        self.result.errors.append(message + "; stopped, nothing more sent. Run apply again.")
        self.progress.message(message)
        self.record(
            number,
            batch.rule,
            {
                i: RunResult(
                    Outcome.FAILED,
                    {
                        "reason": "could not be re-read right before the call; not sent",
                        "error": str(e),
                    },
                )
                for i in ids
                if i not in self.ledger.final_outcomes
            },
            {},
        )

    def close_open_rows(self) -> None:
        """Runs sent by this apply with no answer recorded (interrupted): one read back settles
        the ones that show the change; the rest stay pending for the next apply."""
        open_rows = self.ledger.open_rows()
        if not open_rows:
            return
        self.progress.message(
            f"interrupted: reading back the {len(open_rows)} runs whose call was in flight "
            "(Ctrl-C again to leave them pending for the next apply)"
        )
        pending = {
            p.flow_run_id: p
            for p in audit.unresolved(self.store)
            if p.apply_id == self.result.apply_id
        }
        settle_pending(self, [pending[i] for i in open_rows if i in pending], wait=False)
        # (what it could not settle stays pending: the next apply reads it back)


def settle_pending(applier: _Applier, rows: list[audit.PendingRow], *, wait: bool) -> set[str]:
    """Read back runs sent by an apply that never recorded their answer; settle what shows.

    A run is settled under the apply that sent it: gone after a delete is ``deleted``
    by that apply, a new state of the requested type ``accepted``, unchanged (after
    ``settle_seconds`` since it was sent) ``failed``. Returns the runs now known to have
    changed (done by that apply, or gone)."""
    if not rows:
        return set()
    outcomes = _settle_rows(applier, rows, final=False)
    unchanged = [r for r in rows if (r.apply_id, r.flow_run_id) not in outcomes]
    if wait and unchanged:
        # Unchanged so far: its call may still be running; wait out the bound, then decide.
        newest = max(r.sent_at for r in unchanged)
        left = applier.settle_seconds - (datetime.now(timezone.utc) - newest).total_seconds()
        applier.client.pause_for(left)
        outcomes.update(_settle_rows(applier, unchanged, final=True))
    deleted = [run for (_, run), (o, _) in outcomes.items() if o == Outcome.DELETED.value]
    with applier.store.transaction():
        audit.settle_earlier(applier.store, outcomes, applier.result.apply_id)
        synced_tables.mark_deleted(applier.store, "flow_runs", deleted)
    return {run for (_, run), (o, _) in outcomes.items() if o != Outcome.FAILED.value}


def _settle_rows(
    applier: _Applier, rows: list[audit.PendingRow], *, final: bool
) -> dict[tuple[str, str], tuple[str, Any]]:
    """Read the runs back: (apply, run) -> outcome for those the server shows settled
    (with ``final``, unchanged runs too: ``failed``)."""
    after = applier._read([r.flow_run_id for r in rows], {})
    outcomes: dict[tuple[str, str], tuple[str, Any]] = {}
    for row in rows:
        before = Seen(row.state_type_before, row.state_id_before, None)
        now = after.get(row.flow_run_id)
        requested = row.requested_type if row.action == "set_state" else None
        verdict = applier._evidence(row.action, requested, row.flow_run_id, before, now)
        if verdict is None:
            if not final:
                continue  # it may still be on its way
            verdict = RunResult(
                Outcome.FAILED,
                {"reason": "sent, but the server shows it unchanged: not done; run apply again"},
            )
        if verdict.outcome is Outcome.PENDING:
            continue
        evidence = {
            "read_back_at": datetime.now(timezone.utc).isoformat(),
            **(verdict.details or {}),
        }
        outcomes[(row.apply_id, row.flow_run_id)] = (verdict.outcome.value, evidence)
    return outcomes


def reread_runs(client: PrefectClient, store: Writer, ids: list[str]) -> int:
    """Read these runs from the server into the file (``plan --refresh``); returns how many."""
    reader = RunReader(client, store, "plan-refresh")
    try:
        reader.read(ids)
    except BaseException as e:
        with contextlib.suppress(Exception):
            reader.finish(error=str(e))
        raise
    reader.finish()
    return len(ids)


def new_result(plan: Plan) -> ApplyResult:
    """An empty result for an apply of ``plan`` (its id names the apply in ``policy_actions``)."""
    return ApplyResult.new(plan.policy.sha256)


def apply_plan(
    client: PrefectClient,
    store: SandboxedWriter,
    plan: Plan,
    *,
    progress: Progress | None = None,
    batch_size: int = BULK_LIMIT,
    attempts: int | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    result: ApplyResult | None = None,
) -> ApplyResult:
    """Send the confirmed plan's batches, each re-checked right before its call; classify every run once.

    ``result`` (optional) is filled as the apply goes, so a caller still holds what was
    done when this raises (401, the file, Ctrl-C): every outcome known is in it and in
    ``policy_actions``."""
    check_guards(plan)
    progress = progress or NullProgress()
    began = time.monotonic()
    result = result or new_result(plan)
    applier = _Applier(
        client, store, plan, progress, attempts or client.retry.attempts, settle_seconds, result
    )
    client.check()  # a wrong URL or a stopped server fails in a second, not after retries
    caps = client.capabilities()
    if not caps.bulk:
        forced = [
            rp.rule.name
            for rp in plan.rules
            if isinstance(rp.rule, SetStateRule) and rp.rule.force and rp.planned
        ]
        if forced:
            raise PolicyError(
                f"{caps.describe()} has no bulk_set_state (before 3.6.16): rule "
                f"{forced[0]!r} forces a state, which the per-run endpoint cannot guard by the "
                "state the run had when re-read; upgrade the server, or drop `force` from the rule."
            )
        applier.per_run = True
        batch_size = min(batch_size, PER_RUN_BATCH)
    result.path = (
        "bulk"
        if caps.bulk
        else f"per-run: {caps.describe()} lacks the bulk endpoints (3.6.16+); "
        "DELETE /flow_runs/{id} has no state guard"
    )
    failure: str | None = None
    try:
        earlier = audit.unresolved(store, besides=result.apply_id)
        if earlier:
            progress.message(
                f"{len(earlier)} runs sent by an earlier apply have no recorded answer; reading them back"
            )
            settled = settle_pending(applier, earlier, wait=True)
            result.resolved_earlier = len(settled)
        else:
            settled = set()
        progress.phase("apply", total=plan.total)
        for number, batch in enumerate(batches(plan, batch_size), 1):
            result.batches = number
            # A run an earlier apply is now known to have changed belongs to that apply.
            todo = [i for i in batch.ids if i not in settled]
            if todo:
                applier.run_batch(
                    number, Batch(batch.rule, batch.state_type, todo, batch.deployments)
                )
            else:
                progress.advance(len(batch.ids))
    except _Stop:
        pass
    except BaseException as e:
        failure = f"{type(e).__name__}: {e}"
        with contextlib.suppress(Exception):
            applier.close_open_rows()
        raise
    finally:
        with contextlib.suppress(Exception):
            applier.reader.finish(error=failure)
        result.seconds = time.monotonic() - began
    result.seconds = time.monotonic() - began
    return result
