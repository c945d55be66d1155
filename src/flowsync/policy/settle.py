"""Settling what a lost answer or a killed apply left: reading the runs until the server shows.

Owns ``Settler``, one per apply: what the apply knows of its calls whose answer was
lost (each run's problem and its state before that call, ``lost``), and how what
happened to a run is read from the server afterwards:

- ``settle_lost`` (step 4 of a batch, ``policy/batch.py``, for a lost answer: 5xx,
  dropped connection, timeout): read the runs until they show the change or stay
  unchanged for ``settle_seconds`` (after a timeout or a dropped connection the
  server may still be working on the call; after a 5xx it has finished, and one
  read settles it). What changed is attributed to this apply; only runs still
  unchanged go back to the batch's step 1.
- ``after_lost``/``evidence``: ``classify_lost`` for one run, reading its state
  history when only that can tell whether the requested state came in between.
- ``settle_pending``: runs an apply sent with no answer recorded (its ``pending``
  audit rows), settled under the apply that sent them: a killed apply's when the
  next apply starts (``apply_plan``), this apply's own on an interrupt
  (``close_open_rows``).

Must not: send a call (only the batch sends, and only after re-checking), select
runs (that is ``plan``), write audit rows other than settling pending ones
(``store/audit.py``'s ``settle_earlier``), print, or import httpx/duckdb.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flowsync.api import PrefectClient
from flowsync.errors import ApiError
from flowsync.policy.answers import (
    Call,
    Fresh,
    Lost,
    Seen,
    Verdict,
    classify_lost,
    with_lost,
)
from flowsync.policy.model import SetStateRule
from flowsync.policy.plan import RuleModel
from flowsync.policy.result import ApplyResult, Outcome, RunResult
from flowsync.progress import Progress
from flowsync.store import SandboxedWriter, audit, synced_tables

__all__ = ["SETTLE_SECONDS", "Settled", "Settler"]

# How long a call whose answer was lost may still be running on the server: its runs are
# read until they change or stay unchanged this long (Prefect's own statement timeout is
# 10 s by default, PREFECT_SERVER_DATABASE_TIMEOUT).
SETTLE_SECONDS = 30.0
# How runs whose call's outcome is unknown are read back until they show it or the bound
# passes (a lost answer's, an earlier apply's pending rows): the first pause, doubled after
# each read up to the last.
READ_BACK_FIRST_PAUSE, READ_BACK_MAX_PAUSE = 0.5, 5.0


# What a settled row says when its call left the run untouched.
UNTOUCHED = frozenset({Outcome.FAILED.value, Outcome.SKIPPED.value, Outcome.GONE.value})

# The actions whose effect ``classify_lost`` reads from a run (a rule's ``action``).
KNOWN_ACTIONS = frozenset({"delete", "set_state"})


def within_guard(before: Seen, now: Seen | None) -> bool:
    """Whether a bulk call guarded by the state type ``before`` had may still act on the run
    as ``now`` shows it: another client gave it a new state of the same type (a retry that
    failed again, a state set again), which the server-side guard does not tell apart."""
    return now is not None and now.state_type is not None and now.state_type == before.state_type


@dataclass(frozen=True)
class Settled:
    """What ``settle_pending`` did: rows settled; runs now known changed by the apply that sent
    them (not those it left untouched: unchanged, changed by another client, or gone: the
    apply settling them decides those again, as any run it planned); runs still unknown;
    of those, the ones sent with an action, or left with an outcome, this flowsync does not
    know (run -> "action 'x'" or "outcome 'y'": a newer flowsync's, left as is for it)."""

    rows: int
    changed: set[str]
    unknown: set[str]
    foreign: dict[str, str] = field(default_factory=dict)


class Settler:
    def __init__(
        self,
        client: PrefectClient,
        store: SandboxedWriter,
        result: ApplyResult,
        progress: Progress,
        read: Callable[[list[str]], dict[str, Seen]],
        settle_seconds: float,
    ) -> None:
        self.client, self.store, self.result, self.progress = client, store, result, progress
        self.read = read  # the batch's re-read by id (counted as a re-read), into the file
        self.settle_seconds = settle_seconds
        self.lost: dict[str, tuple[str, Seen]] = {}  # run -> (problems, state before the last call)
        # The calls carry no server-side state guard (per run, a server without the bulk
        # endpoints): one still running lands whatever state the run has moved on to.
        self.unguarded = False

    # what one run shows after a lost answer ------------------------------------------------

    def after_lost(
        self, rule: RuleModel, run_id: str, before: Seen, now: Seen | None
    ) -> RunResult | None:
        requested = rule.state.type if isinstance(rule, SetStateRule) else None
        return self.evidence(rule.action, requested, run_id, before, now)

    def after_unclear(
        self, rule: RuleModel, run_id: str, before: Seen, now: Seen, why: str
    ) -> RunResult | None:
        """A set_state answer that says nothing sure of a run whose state changed during the
        call (``answers.unclear``: ``why``): what the server shows (and, when only it can tell,
        the run's history) says whether this call set it, as after a lost answer."""
        requested = rule.state.type if isinstance(rule, SetStateRule) else None
        return self.evidence(rule.action, requested, run_id, before, now, why)

    def evidence(
        self,
        action: str,
        requested: str | None,
        run_id: str,
        before: Seen,
        now: Seen | None,
        lost: str = "the call's answer was lost",
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
        return classify_lost(action, requested, before, now, history, lost)

    def _history(self, run_id: str) -> list[dict[str, Any]] | None:
        try:
            return self.client.flow_run_states(run_id)
        except ApiError:
            return None  # without it the run is not counted as changed by this apply, nor resent

    def _pause(self, waited: float, delay: float, bound: float) -> tuple[float, float]:
        """One pause between read-backs: ``delay``, cut to what is left of ``bound``. Returns the
        time waited so far and the next delay (doubled up to ``READ_BACK_MAX_PAUSE``). Counted
        on the client's clock: the reads' own time is not, and a test's sleep takes none."""
        pause = min(delay, max(bound - waited, 0.0))
        self.client.pause_for(pause)
        return waited + pause, min(delay * 2, READ_BACK_MAX_PAUSE)

    # a lost answer in a batch ----------------------------------------------------------------

    def settle_lost(
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
            # Judged against the state this call guarded: an earlier lost call's guard no
            # longer holds once the run was re-read in another state and sent again.
            problem = f"attempt {attempt}: {answer.problem}"
            earlier = self.lost.get(i)
            self.lost[i] = (f"{earlier[0]}; {problem}" if earlier else problem, fresh.seen[i])
        waited, delay = 0.0, READ_BACK_FIRST_PAUSE
        results: dict[str, RunResult] = {}
        untouched = list(call.ids)
        # Runs whose state another client changed (not as requested) while a call without a
        # state guard, or with one their new state still meets, may still be running: that
        # call may yet delete the run or set the requested state,
        # so what they show is their outcome only once the server has finished (the bound).
        moved: dict[str, RunResult] = {}
        while True:
            try:
                after = self.read(untouched)
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
                verdict = self.after_lost(rule, i, self.lost[i][1], after.get(i))
                moved.pop(i, None)
                if verdict is None:
                    still.append(i)
                elif (
                    (self.unguarded or within_guard(self.lost[i][1], after.get(i)))
                    and not answer.finished
                    and verdict.outcome in (Outcome.SKIPPED, Outcome.PENDING)
                ):
                    moved[i] = with_lost(verdict, self.lost[i][0])
                    still.append(i)
                else:
                    results[i] = with_lost(verdict, self.lost[i][0])
            untouched = still
            if not untouched or answer.finished or waited >= self.settle_seconds:
                break
            waited, delay = self._pause(waited, delay, self.settle_seconds)
        results.update(moved)  # the server has finished with the call: as they were last read
        return Verdict(results, again=[i for i in untouched if i not in moved])

    # pending rows: sent, no answer recorded --------------------------------------------------

    def close_open_rows(
        self, open_rows: list[str], counted: AbstractSet[str] = frozenset()
    ) -> None:
        """Runs sent by this apply with no answer recorded (interrupted): one read back settles
        the ones that show the change; the rest stay pending for the next apply. ``counted``:
        those the result already counts as ``pending``: a settled one replaces that count."""
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
        self.settle_pending(
            [pending[i] for i in open_rows if i in pending], wait=False, own=True, counted=counted
        )
        # (what it could not settle stays pending: the next apply reads it back)

    def settle_pending(
        self,
        rows: list[audit.PendingRow],
        *,
        wait: bool,
        own: bool = False,
        counted: AbstractSet[str] = frozenset(),
    ) -> Settled:
        """Read back runs sent by an apply that never recorded their answer; settle what shows.

        A run is settled under the apply that sent it: gone after a delete is ``deleted``
        by that apply, a new state of the requested type ``accepted``, unchanged (after
        ``settle_seconds`` since it was sent) ``failed``. ``own``: the rows are this apply's
        (it was interrupted): what settles is counted in its result too. Returns how many
        rows settled, the runs now known to have been changed by that apply and
        the runs still unknown (a state history that could not be read)."""
        if not rows:
            return Settled(0, set(), set())
        # A newer flowsync's action, or outcome (``audit.unresolved``'s ``known``): what its
        # call did cannot be read from the run by these rules; its row stays as it is (for a
        # flowsync that knows it), its run unsent.
        foreign = {
            r.flow_run_id: f"action {r.action!r}"
            if r.action not in KNOWN_ACTIONS
            else f"outcome {r.outcome!r}"
            for r in rows
            if r.action not in KNOWN_ACTIONS or r.outcome != Outcome.PENDING.value
        }
        rows = [r for r in rows if r.flow_run_id not in foreign]
        # Another apply's row does not say how its call was sent: whatever this apply takes the
        # server to be now (upgraded since, or its version unreadable: taken to have the bulk
        # endpoints), that call may have had no state guard, and may still land.
        unguarded = self.unguarded or not own
        outcomes = self._settle_rows(rows, final=False, unguarded=unguarded) if rows else {}
        unchanged = [r for r in rows if (r.apply_id, r.flow_run_id) not in outcomes]
        if wait and unchanged:
            # Unchanged so far: its call may still be running. Read again as settle_lost does
            # (READ_BACK_*_PAUSE) until every run shows what happened or the bound has
            # passed, then decide the rest. Each read judges as the first: only a run that
            # shows the change settles before the bound.
            newest = max(r.sent_at for r in unchanged)
            left = self.settle_seconds - (datetime.now(timezone.utc) - newest).total_seconds()
            waited, delay, final = 0.0, READ_BACK_FIRST_PAUSE, False
            while unchanged and not final:
                waited, delay = self._pause(waited, delay, left)
                final = waited >= left  # the bound has passed: what is unchanged is decided
                outcomes.update(self._settle_rows(unchanged, final=final, unguarded=unguarded))
                unchanged = [r for r in unchanged if (r.apply_id, r.flow_run_id) not in outcomes]
        deleted = [run for (_, run), (o, _) in outcomes.items() if o == Outcome.DELETED.value]
        with self.store.transaction():
            audit.settle_earlier(self.store, outcomes, self.result.apply_id)
            synced_tables.mark_deleted(self.store, "flow_runs", deleted)
        if own:
            rules = {r.flow_run_id: r.rule for r in rows}
            for (_, run), (outcome, _) in outcomes.items():
                if run in counted:  # counted `pending` before: now what it settled as
                    self.result.add(rules[run], Outcome.PENDING, -1)
                self.result.add(rules[run], Outcome(outcome))
            for per in self.result.counts.values():
                if per.get(Outcome.PENDING.value) == 0:
                    del per[Outcome.PENDING.value]
        return Settled(
            len(outcomes),
            {run for (_, run), (o, _) in outcomes.items() if o not in UNTOUCHED},
            {r.flow_run_id for r in rows if (r.apply_id, r.flow_run_id) not in outcomes}
            | set(foreign),
            foreign,
        )

    def _settle_rows(
        self, rows: list[audit.PendingRow], *, final: bool, unguarded: bool
    ) -> dict[tuple[str, str], tuple[str, Any]]:
        """Read the runs back: (apply, run) -> outcome for those the server shows settled
        (with ``final``, unchanged runs too: ``failed``)."""
        after = self.read([r.flow_run_id for r in rows])
        read_at = datetime.now(timezone.utc)
        outcomes: dict[tuple[str, str], tuple[str, Any]] = {}
        for row in rows:
            before = Seen(row.state_type_before, row.state_id_before, None)
            now = after.get(row.flow_run_id)
            requested = row.requested_type if row.action == "set_state" else None
            verdict = self.evidence(row.action, requested, row.flow_run_id, before, now)
            if (
                not final
                and verdict is not None
                and verdict.outcome is Outcome.SKIPPED
                and (unguarded or within_guard(before, now))
                and (read_at - row.sent_at).total_seconds() < self.settle_seconds
            ):
                # Another client changed the run, and the call (without a state guard, or with
                # one the run's new state still meets) may still be on its way: it may yet
                # land, so the run is read again after the bound.
                verdict = None
            if verdict is None:
                if not final:
                    continue  # it may still be on its way
                verdict = RunResult(
                    Outcome.FAILED,
                    {
                        "reason": "sent, but the server shows it unchanged: not done; run apply again"
                    },
                )
            if verdict.outcome is Outcome.PENDING:
                continue
            evidence = {
                "read_back_at": datetime.now(timezone.utc).isoformat(),
                **(verdict.details or {}),
            }
            outcomes[(row.apply_id, row.flow_run_id)] = (verdict.outcome.value, evidence)
        return outcomes
