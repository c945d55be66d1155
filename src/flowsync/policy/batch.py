"""One batch of an apply: every call decided on the server as it is right before it.

Owns the sequence of one batch (one rule, one planned state type, at most 50
runs), each step with typed inputs and outputs:

1. ``reread`` (``policy/reread.py``): read from the server every run the decision
   rests on, write what changed to the file, and decide the policy again over
   the file for the batch (``plan.decide_scope``: rule SQL, protect_tags,
   keep_newest, earlier rules); the confirmed plan bounds it, so nothing the
   plan did not hold is ever sent.
2. ``decide``: the calls to send from that decision. Runs not sent get their
   final outcome at once: ``gone`` or ``skipped`` with the check and what
   changed (or, for a run an earlier call of this apply may have changed, what
   the evidence says: ``deleted``/``accepted``).
3. ``send``: one call per fresh state type (``policy/send.py``), explicit
   ``id.any_`` (<= 50) and that state type as the server-side guard (one call per
   run on a server without the bulk endpoints). The transport never sends it twice.
4. ``classify``: the answer, run by run. The server's per-run answer; or a
   throttle / a connection never made (``NotSentError``): nothing happened,
   wait as told and go back to step 1; or a lost answer (``UncertainError``:
   5xx, dropped connection, timeout): the ``Settler`` (``policy/settle.py``)
   reads the runs until they show the change or stay unchanged for
   ``settle_seconds``, what changed is attributed to this apply, and only runs
   still unchanged go back to step 1.
5. ``record``: the ``Ledger`` writes each outcome, and the file marks the
   runs deleted (or re-reads the runs set) in the same transaction, before any
   batch whose decision may rest on them is decided.

``steps`` runs them, up to ``attempts`` times for each run sent back to step 1; a
run never done gets ``failed``. A batch's calls after its first go out on its re-read only
while that re-read is fresh (per run, its first call too): after a lost answer (the settle
may have waited seconds), or ``FRESH_FOR`` after the re-read answered (one call a run on
older servers), or when the
request budget would hold the next call back, the calls not sent go back to step 1 without
using an attempt. Nothing waits for the request budget inside a batch's window, from the
first read its decision rests on to its calls (``ApiSession.unpaced``: the batch waits for a
slot first); when the server holds a read inside it back (429, a retry) until the re-read
is older than ``FRESH_FOR``, nothing is sent on it: the batch goes back to step 1, each run
using an attempt. When this batch and the next
ones decide a run from
its own row (``Rereader.own_rows``), two things are done ahead (``policy/ahead.py``):
up to ``AHEAD_BATCHES`` batches of the rule are decided over the file in one
decision before the first is re-read (each still re-read right before its call; its
part stands only if that re-read changed none of its rows and answered within
``AHEAD_MAX_AGE``); and this batch's last call is left in flight on its own thread
while the next batch is re-read, decided and sent (``steps`` yields then, and
resumed takes the answer). Neither batch's decision rests on the other's answer;
every file access stays on the apply's thread; at most two calls are out, and one for the
``ONE_CALL_BATCHES`` batches after the server lost an answer (``one_call_at_a_time``:
``apply_plan`` then takes the answer of the call in flight before it starts a batch).
A server that cannot be read, or that refuses every call, raises ``Stop``: the
apply (``policy/apply.py``) sends no further batch. The values passed between the
steps and the classification of each run live in ``policy/answers.py``. Must not:
select runs (that is ``plan``), choose or order the batches (that is ``apply``),
print, or import httpx/duckdb.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from flowsync.api import PrefectClient
from flowsync.errors import (
    ApiError,
    AuthError,
    UnsupportedError,
)
from flowsync.policy.ahead import AHEAD_BATCHES, AHEAD_MAX_AGE, Ahead, Task
from flowsync.policy.answers import (
    Acted,
    Answer,
    Batch,
    Call,
    Decided,
    Fresh,
    Lost,
    Partial,
    Refused,
    Throttled,
    Verdict,
    changes,
    classify_unanswered,
    file_rows,
    gone_during_the_call,
    judged_after,
    set_instead,
    unclear,
    with_lost,
)
from flowsync.policy.ledger import Ledger
from flowsync.policy.plan import Plan, RuleModel
from flowsync.policy.reread import Rereader
from flowsync.policy.result import ApplyResult, Outcome, RunResult
from flowsync.policy.send import note_call, send_bulk, send_call
from flowsync.policy.settle import Settler
from flowsync.progress import Progress
from flowsync.store import SandboxedWriter, synced_tables
from flowsync.sync import RunReader

__all__ = ["Applier", "Batch", "Stop"]

# The longest wait a throttled call is given before it is re-checked and sent again.
MAX_THROTTLE_WAIT = 120.0
# The longest a batch's later calls go out after its re-read answered (as a decision made
# ahead, ``AHEAD_MAX_AGE``): later, the calls not sent yet are re-read and decided again.
FRESH_FOR = AHEAD_MAX_AGE
# After the server loses a call's answer, the batches up to this many after it send one call
# at a time (each further loss extends it); then two calls may be out again.
ONE_CALL_BATCHES = 20


class Stop(Exception):
    """The server cannot be read, or refuses every call: no further batch can be checked."""


@dataclass(frozen=True)
class Out:
    """A batch's call in flight while the next batch is checked: what classifying and
    recording its answer takes (``Applier.close_out``, when the apply is interrupted)."""

    number: int
    rule: RuleModel
    call: Call
    fresh: Fresh
    guards: dict[str, str]
    attempt: int
    rowids: Mapping[str, int] | None


# -- the applier ------------------------------------------------------------------------------


class Applier:
    """The steps of one batch, and what they share across the batches of one apply."""

    def __init__(
        self,
        client: PrefectClient,
        store: SandboxedWriter,
        plan: Plan,
        progress: Progress,
        attempts: int,
        settle_seconds: float,
        result: ApplyResult,
        reader: RunReader,
    ) -> None:
        self.client, self.store, self.plan, self.progress = client, store, plan, progress
        self.attempts = max(1, attempts)
        self.result = result
        self.ledger = Ledger(
            store,
            self.result,
            api_url=client.settings.display_url,
            policy_path=plan.policy.source,
            policy_sha256=plan.policy.sha256,
        )
        self.reader = reader
        self.settler = Settler(
            client, store, result, progress, lambda ids: self.rereader.read(ids, {}), settle_seconds
        )
        self.lost = self.settler.lost  # run -> (problem, state before that call): the settler's
        # run -> how old its re-read was when its call would have gone out (not sent: too old)
        self.too_old: dict[str, float] = {}
        self.rereader = Rereader(client, store, plan, result, reader, self.lost)
        self.ahead = Ahead()  # the decision made ahead of the next batches (policy/ahead.py)
        self.one_call_until = 0  # batches up to this one send one call at a time
        self.out: dict[Task[Answer], Out] = {}  # calls in flight while the next batch is checked
        # runs whose row is pending for a call the server did not carry out (a 429, a call
        # never sent), to be sent again -> (batch, rule): ``close_not_done``
        self.not_done: dict[str, tuple[int, RuleModel]] = {}
        self.noted: set[Task[Answer]] = set()  # calls out whose 429 their rows already say

    @property
    def per_run(self) -> bool:
        """The server lacks the bulk endpoints: one call per run."""
        return self.rereader.per_run

    @per_run.setter
    def per_run(self, value: bool) -> None:
        self.rereader.per_run = value
        self.settler.unguarded = value

    # 2. decide (step 1, the re-read, is policy/reread.py) -------------------------------

    def decide(self, batch: Batch, todo: list[str], fresh: Fresh) -> Decided:
        """Step 2: what to send, from the decision made over the file after the fresh read."""
        reasons = fresh.decision.reasons
        dropped = [i for i in todo if i in fresh.seen and reasons[i] is not None]
        file_now = file_rows(self.store, dropped)
        final: dict[str, RunResult] = {}
        groups: dict[tuple[str, str | None], list[str]] = {}
        for i in todo:
            lost = self.lost.get(i)
            if lost is not None and (i not in fresh.seen or reasons[i] is not None):
                # An earlier call of this apply may have done it: the evidence decides.
                verdict = self.settler.after_lost(batch.rule, i, lost[1], fresh.seen.get(i))
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
                seen = fresh.seen[i]
                groups.setdefault((str(seen.state_type), seen.state_name), []).append(i)
        # Per run (no bulk endpoints), each run is its own call: its pending row is written
        # right before its own request, so a stop, Ctrl-C or kill -9 leaves pending only the
        # run whose request was out, never runs that were not sent.
        if self.per_run:
            calls = [Call(kind, [i], name) for (kind, name), ids in groups.items() for i in ids]
        else:
            calls = [Call(kind, ids, name) for (kind, name), ids in groups.items()]
        return Decided(
            calls, {i: with_lost(r, self.lost.get(i, (None,))[0]) for i, r in final.items()}
        )

    # 3. send ------------------------------------------------------------------------------

    def send(self, rule: RuleModel, call: Call, read_at: float) -> Answer:
        """Step 3: one call (``policy/send.py``); whatever happens comes back as a typed
        answer (AuthError raises)."""
        return send_call(self.client, self.result, rule, call, read_at, per_run=self.per_run)

    # 4. classify --------------------------------------------------------------------------

    def classify(
        self, number: int, rule: RuleModel, call: Call, fresh: Fresh, answer: Answer, attempt: int
    ) -> Verdict:
        if isinstance(answer, Partial):
            # The runs answered, then the one call that stopped, then the runs never sent.
            done = self.classify(
                number,
                rule,
                replace(call, ids=call.ids[: answer.stopped_at]),
                fresh,
                Acted(answer.results, []),
                attempt,
            )
            stopped = self.classify(
                number,
                rule,
                replace(call, ids=[call.ids[answer.stopped_at]]),
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
            return self.settler.settle_lost(number, rule, call, fresh, answer, attempt)
        self.result.errors.extend(answer.notes)
        # A REJECT that set another state changed the run all the same.
        acted = {i: set_instead(r, fresh.seen.get(i)) for i, r in answer.results.items()}
        missing = [i for i in call.ids if i not in acted]
        # Prefect's bulk_set_state reads the batch, then sets each run in a transaction of its
        # own: a run deleted in between is answered ABORT with no state ("not found"). Read to
        # tell that from an ABORT of a run still there.
        unsure = {i: why for i, r in acted.items() if (why := unclear(r)) is not None}
        if missing or unsure:
            try:
                after = self.rereader.read(missing + list(unsure), {})
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
                    earlier = (
                        self.settler.after_lost(rule, i, lost[1], after.get(i)) if lost else None
                    )
                    acted[i] = earlier or classify_unanswered(fresh.seen[i], after.get(i))
                for i, why in unsure.items():
                    if i not in after:
                        acted[i] = gone_during_the_call(acted[i])
                    elif after[i].state_id != fresh.seen[i].state_id:
                        judged = self.settler.after_unclear(rule, i, fresh.seen[i], after[i], why)
                        acted[i] = judged_after(acted[i], judged)
        return Verdict({i: with_lost(r, self.lost.get(i, (None,))[0]) for i, r in acted.items()})

    # 5. record ----------------------------------------------------------------------------

    def record(
        self,
        number: int,
        rule: RuleModel,
        results: dict[str, RunResult],
        guards: dict[str, str],
        rowids: Mapping[str, int] | None = None,
    ) -> None:
        """Step 5; ``rowids``: where the runs' rows were when decided ahead (a hint)."""
        deleted = [i for i, r in results.items() if r.outcome is Outcome.DELETED]

        # The state each call set, as its answer (or the read-back) says: the file shows it with
        # the outcome rows, so an apply killed before the re-read below leaves no run the next
        # apply plans again on the state it had before.
        states = {
            i: (str(state["type"]), state.get("name"), state.get("id"))
            for i, r in results.items()
            if r.outcome in (Outcome.ACCEPTED, Outcome.REPLACED)
            and isinstance(state := (r.details or {}).get("state"), dict)
            and state.get("type")
        }

        def show_in_file() -> None:  # with the outcome rows, in their transaction
            n = synced_tables.mark_deleted(self.store, "flow_runs", deleted, rowids=rowids)
            self.result.refreshed["marked_deleted"] = (
                self.result.refreshed.get("marked_deleted", 0) + n
            )
            synced_tables.set_states(self.store, states)

        self.ledger.final(self.ledger.call(number, rule), results, guards, also=show_in_file)
        accepted = [
            i for i, r in results.items() if r.outcome in (Outcome.ACCEPTED, Outcome.REPLACED)
        ]
        if accepted:
            # The file shows the state this apply set (or Prefect set instead) before the next
            # batch is decided.
            try:
                self.rereader.read(accepted, {})
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

    def chunk(self, batch: Batch, upcoming: Sequence[Batch]) -> list[Batch]:
        """``batch`` and the batches after it that one decision made ahead may serve
        (``policy/ahead.py``): of its rule, each deciding a run from its own row, up to
        ``AHEAD_BATCHES``; none when ``batch`` does not decide its runs that way."""
        if not self.rereader.ahead_ok(batch):
            return []
        out = [batch]
        for later in upcoming[: AHEAD_BATCHES - 1]:
            if later.rule.name != batch.rule.name or not self.rereader.ahead_ok(later):
                break
            out.append(later)
        return out

    def overlaps(self, batch: Batch, upcoming: Sequence[Batch]) -> bool:
        """The next batch may be checked and sent while ``batch``'s last call is in flight:
        both decide a run from its own row, so neither decision rests on the other's answer.
        (``apply_plan`` still takes that answer first while ``one_call_at_a_time``.)"""
        return (
            bool(upcoming) and self.rereader.own_rows(batch) and self.rereader.own_rows(upcoming[0])
        )

    def one_call_at_a_time(self, number: int) -> bool:
        """Batch ``number`` waits for the call still out before it starts: the server lost a
        call's answer within the last ``ONE_CALL_BATCHES`` batches."""
        return number <= self.one_call_until

    def _throttled_out(self) -> Throttled | None:
        """The answer of a call still out (its batch waiting to take it) if it was a 429 whose
        Retry-After has not passed yet (nor MAX_THROTTLE_WAIT since it came)."""
        for task in list(self.out):
            answer = task.peek()
            if not isinstance(answer, Throttled):
                continue
            # (held at most MAX_THROTTLE_WAIT, as a batch's own wait is)
            if min(answer.wait or 0.0, MAX_THROTTLE_WAIT) > time.monotonic() - answer.at:
                return Throttled(
                    answer.wait,
                    f"the call still out was not carried out: {answer.problem}",
                    answer.at,
                )
        return None

    def _note_throttled_out(self) -> None:
        """The calls still out answered 429: their batch takes that answer only after the wait
        it holds this batch in; their rows say now that the server did not carry them out (a
        kill -9 in the wait leaves no pending row for the next apply to credit)."""
        for task, out in list(self.out.items()):
            answer = task.peek()
            if isinstance(answer, Throttled) and task not in self.noted:
                self.noted.add(task)
                self.ledger.not_carried_out(
                    self.ledger.call(out.number, out.rule), list(out.call.ids), answer.problem
                )

    def wait(self, seconds: float, sleep: Callable[[float], None]) -> None:
        """Each wait the client makes the apply thread sleep (``ApiSession.waits_through``: a
        retry's backoff, a Retry-After, the request budget's, a read-back's pause) takes
        ``seconds``, as ``sleep`` would; a call still out that the server answers 429 before
        or during it is recorded not carried out as soon as that answer comes, not when the
        next batch reaches its call (its re-read may be the read the server holds back). Not
        inside a transaction of the file (none spans a request; then it only sleeps)."""
        if self.store.in_transaction:
            sleep(seconds)
            return
        self._note_throttled_out()
        waiting = [task for task in self.out if not task.done()]
        if waiting:
            until = time.monotonic() + seconds
            for task in waiting:  # woken by its answer, the rest of the wait slept after
                task.wait(max(0.0, until - time.monotonic()))
                self._note_throttled_out()
            seconds = max(0.0, until - time.monotonic())
        sleep(seconds)
        self._note_throttled_out()

    def _lost_answer(self, number: int, answer: Answer) -> None:
        """After the server lost a call's answer (5xx, a dropped connection, a timeout), the
        next ``ONE_CALL_BATCHES`` batches send one call at a time: a server that takes one
        writer at a time (SQLite) answers 503 to a second call out, and each such answer
        costs a read and a resend (BENCHMARKS.md, apply against a SQLite-backed server)."""
        if not isinstance(answer, Lost):
            return
        if not self.one_call_at_a_time(number + 1):
            self.progress.message(
                f"batch {number}: the server lost a call's answer ({answer.problem}); "
                f"one call at a time for the next {ONE_CALL_BATCHES} batches"
            )
        self.one_call_until = number + ONE_CALL_BATCHES
        if self.result.one_call_after is None:
            self.result.one_call_after = number

    def steps(self, number: int, batch: Batch, upcoming: Sequence[Batch] = ()) -> Iterator[None]:
        """The steps for ``batch``; ``upcoming``: the batches after it, in order. Yields once,
        with its last call in flight, when the next batch may be checked and sent meanwhile
        (``overlaps``); resumed, it takes that call's answer and ends the batch."""
        rule = batch.rule
        todo = list(batch.ids)
        chunk = self.chunk(batch, upcoming)
        if chunk and not self.ahead.holds(number, todo):
            # One decision over the file for this batch and the next ones of its rule, before
            # the re-read: each batch takes its part, used only if its re-read changes nothing.
            self.ahead.decide(
                {number + k: b.ids for k, b in enumerate(chunk)},
                functools.partial(self.rereader.decide_ahead, chunk),
            )
        ahead = self.ahead.take(number, todo)
        rowids = ahead.rowids if ahead else None
        overlap = self.overlaps(batch, upcoming)
        tries: dict[str, int] = {}  # per run: the attempts it used (sent, or met a 429)
        first = True
        while True:
            for i in todo:  # this attempt's cause is its own
                self.too_old.pop(i, None)
            # The window: from the first read the decision rests on (the catch-up of other
            # runs' events, the batch's runs, runs that outrank them, lookups, a lost answer's
            # history) to the calls, nothing waits for the request budget (it waits first).
            with self.client.unpaced() as window:
                try:
                    fresh = self.rereader.reread(batch, todo, ahead)
                    ahead = None
                except AuthError:
                    raise
                except ApiError as e:
                    self._not_checked(number, batch, todo, e)
                    raise Stop from e
                decided = self.decide(batch, todo, fresh)
            waits = self.client.budget_waits()
            guards = {i: s.state_type or batch.state_type for i, s in fresh.seen.items()}
            again: list[str] = []  # sent back to step 1 by an answer: uses an attempt each
            stale: list[str] = []  # not sent: the re-read is no longer fresh enough for them
            wait: float | None = None
            calls = list(decided.calls)
            # Its rows are as old as the window's first answer (a page before a held one);
            # what it slept counts whatever the clock (a test's sleep takes no time).
            since = window.answered_at if window.answered_at is not None else fresh.answered_at
            age = max(window.slept, time.monotonic() - since)
            if (window.slept or self.per_run) and age > FRESH_FOR:
                # The server held a read inside the window back (a 429's Retry-After, a
                # retry's backoff) until the batch's re-read was no longer fresh: nothing is
                # sent on it; read and decided again, each run using an attempt (a server
                # that keeps asking to wait ends the batch). A short retry (a busy SQLite
                # server's 503) leaves it fresh: sent as usual. Per run (no server-side state
                # guard: the re-read is all that holds a call) the first call as well as the
                # later ones goes out only while it is fresh, however the window took long (a
                # slow read of the runs' deployments, a slow rule).
                again = [i for c in calls for i in c.ids]
                if not window.slept:  # the reads themselves took that long, not a wait
                    self.too_old.update(dict.fromkeys(again, age))
                calls = []
            elif age > FRESH_FOR and calls:
                # In bulk, the reads and the decision alone took longer than a call may follow
                # the re-read (a slow lookup, catch-up or rule). The state guard holds the runs'
                # states, not their tags or names: the runs are read once more (with the runs a
                # keep_newest ranks above them), and the calls go out only if the server shows
                # each as the decision saw it (the window then counts from that read);
                # otherwise they are read and decided again.
                ids = [i for c in calls for i in c.ids]
                shown = {i: fresh.seen[i] for i in ids} | fresh.ranked
                try:
                    with self.client.unpaced():
                        still = all(s.row is not None for s in shown.values()) and (
                            self.rereader.unchanged(
                                {i: s.row for i, s in shown.items() if s.row is not None}
                            )
                        )
                except ApiError as e:  # (a 401 too: the runs not sent are recorded first)
                    self.record(number, rule, decided.final, guards)
                    self._not_checked(number, batch, ids, e)
                    if isinstance(e, AuthError):
                        raise
                    raise Stop from e
                if still:
                    fresh = replace(fresh, answered_at=self.rereader.reader.answered_at)
                else:
                    again, calls = ids, []
            lost = False
            final_recorded = False  # decided.final's rows written
            if not calls:
                self.record(number, rule, decided.final, guards)
            while calls:
                # A later call goes out on this re-read only at once: not after a lost answer,
                # nor FRESH_FOR after the re-read answered, nor when the request budget would
                # hold it back or held anything back since (a read-back of the call before;
                # the first call takes its slot without waiting: api/budget.py).
                if calls[0] is not decided.calls[0] and (
                    lost
                    or time.monotonic() - fresh.answered_at > FRESH_FOR
                    or not self.client.may_send_now()
                    or self.client.budget_waits() != waits
                ):
                    stale = [i for c in calls for i in c.ids]
                    break
                call = calls.pop(0)
                attempt = 1 + max(tries.get(i, 0) for i in call.ids)
                # The call still out was answered 429: this one would meet the same limit. It is
                # not sent; it waits as told, then is re-read and decided again.
                throttled_out = self._throttled_out()
                if throttled_out is None:
                    self.ledger.pending(
                        self.ledger.call(number, rule),
                        {i: call.state_type for i in call.ids},
                        {i: row for i in call.ids if (row := fresh.seen[i].row) is not None},
                    )
                    for i in call.ids:
                        self.not_done.pop(i, None)
                else:
                    self._note_throttled_out()
                try:
                    answer: Answer
                    if throttled_out is not None:
                        answer = throttled_out
                    elif overlap and not calls and first:
                        note_call(self.result, fresh.answered_at)
                        in_flight = Task(functools.partial(send_bulk, self.client, rule, call))
                        self.out[in_flight] = Out(
                            number, rule, call, fresh, guards, attempt, rowids
                        )
                        if decided.final and call is decided.calls[0]:
                            # The runs not sent, recorded now the call is out: whatever stops
                            # the apply while it is in flight, they have their rows.
                            self.record(number, rule, decided.final, guards, rowids)
                            final_recorded = True
                        try:
                            yield  # the next batch is re-read, decided and sent meanwhile
                            answer = in_flight.result()
                        finally:
                            self.out.pop(in_flight, None)
                            self.noted.discard(in_flight)
                    else:
                        answer = self.send(rule, call, fresh.answered_at)
                except AuthError as e:
                    if call is decided.calls[0] and not final_recorded:
                        self.record(number, rule, decided.final, guards)
                    self._auth_failed(number, batch, call, calls, str(e))
                    raise
                self._lost_answer(number, answer)
                lost = isinstance(answer, Lost) or (
                    isinstance(answer, Partial) and isinstance(answer.answer, Lost)
                )
                verdict = self.classify(number, rule, call, fresh, answer, attempt)
                if decided.final and call is decided.calls[0] and not final_recorded:
                    # The runs not sent are recorded after the first call, out of its window.
                    verdict = Verdict(
                        {**decided.final, **verdict.results},
                        verdict.again,
                        verdict.wait,
                        verdict.stop,
                    )
                self.record(number, rule, verdict.results, guards, rowids)
                if verdict.stop is not None:
                    # This call's runs still to send (per run: after the one that stopped) too:
                    # their pending rows must not read as sent to the next apply.
                    rest = verdict.again + [i for c in calls for i in c.ids]
                    self._not_sent(number, rule, rest, verdict.stop)
                    raise Stop
                again += verdict.again
                for i in verdict.again:
                    self.too_old.pop(i, None)  # this attempt's cause is its answer
                throttled = answer.answer if isinstance(answer, Partial) else answer
                if isinstance(throttled, Throttled):
                    if throttled_out is None:  # (not sent: the rows are as they were)
                        self.not_done.update(dict.fromkeys(verdict.again, (number, rule)))
                        # durably, before the wait: a kill -9 in it leaves no pending row
                        self.ledger.not_carried_out(
                            self.ledger.call(number, rule), verdict.again, throttled.problem
                        )
                    # Everything not sent yet goes back to step 1 after the wait (unsent: it
                    # uses no attempt).
                    stale = [i for c in calls for i in c.ids]
                    left = throttled.left()
                    wait = left if left is not None else self.client.backoff(attempt)
                    break
            first = False
            for i in again:
                tries[i] = tries.get(i, 0) + 1
            spent = [i for i in again if tries[i] >= self.attempts]
            if spent:
                self._gave_up(number, rule, spent, self.attempts)
            again = [i for i in again if tries[i] < self.attempts]
            if not again and not stale:
                break
            if again or wait is not None:
                self.client.pause_for(min(wait if wait is not None else 0.0, MAX_THROTTLE_WAIT))
            todo = again + stale
        self.progress.advance(len(batch.ids))
        # Its calls answered, the next batch's re-read not sent: a checkpoint due soon is made
        # here, never by a commit inside a re-read -> call window (BENCHMARKS.md).
        self.store.checkpoint_early()

    def close_out(self, why: str) -> None:
        """The apply stops (Ctrl-C, SIGTERM, a 401) with a call out: one whose answer is back
        (its batch had not taken it yet: the next batch was being checked) is recorded as
        answered, not read back (a run the server refused, unchanged, read as `pending`,
        then `failed` by the next apply). Then ``close_not_done``."""
        for task, out in list(self.out.items()):
            answer = task.peek()
            if isinstance(answer, Throttled):
                self.not_done.update(dict.fromkeys(out.call.ids, (out.number, out.rule)))
            elif isinstance(answer, (Acted, Refused)):
                verdict = self.classify(
                    out.number, out.rule, out.call, out.fresh, answer, out.attempt
                )
                self.record(out.number, out.rule, verdict.results, out.guards, out.rowids)
            else:
                continue
            self.out.pop(task, None)
        self.close_not_done(why)

    def close_not_done(self, why: str) -> None:
        """Runs whose row is pending for a call the server did not carry out (a 429, a call
        never sent), the apply stopping before they are sent again: ``failed``, never left
        pending: the next apply would read them back under this one, and credit it with
        what another client did to them since."""
        still = set(self.ledger.open_rows())
        groups: dict[tuple[int, str], tuple[RuleModel, list[str]]] = {}
        for i, (number, rule) in self.not_done.items():
            if i in still:
                groups.setdefault((number, rule.name), (rule, []))[1].append(i)
        for (number, _), (rule, ids) in groups.items():
            results = {
                i: RunResult(
                    Outcome.FAILED,
                    {
                        "reason": "the server did not carry out its call (throttled, or never "
                        f"sent), and the apply stopped before sending it again ({why})",
                    },
                )
                for i in ids
            }
            self.record(number, rule, results, {})
        self.not_done.clear()

    def _gave_up(self, number: int, rule: RuleModel, ids: list[str], attempt: int) -> None:
        why = {i: self.lost[i][0] for i in ids if i in self.lost}
        results = {
            i: RunResult(
                Outcome.FAILED,
                {
                    "reason": f"not done after {attempt} attempts (throttled, its re-read held "
                    "back by the server or too old by its call, or the answer lost while the server shows the run "
                    "unchanged); run apply again",
                    "error": why.get(i),
                },
            )
            for i in ids
        }
        self.record(number, rule, results, {})
        message = f"batch {number} ({rule.name}): {len(ids)} runs not done after {attempt} attempts"
        old = [self.too_old[i] for i in ids if i in self.too_old]
        if why:  # what the server answered last (each run's row says its own)
            message += f" (the last answer lost: {list(why.values())[-1]})"
        elif old:  # the reads the decision rests on take longer than a call may follow them
            message += (
                f" (never sent: their re-read was {max(old):.1f} s old by the call, over the "
                f"{FRESH_FOR:g} s a call may follow it{' per run, where no state guard holds it' if self.per_run else ''}; "
                "a slow server, link or rule: its reads of flows, deployments and other runs "
                "count in that time)"
            )
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
