"""The audit ledger of one apply: the only writer of its ``policy_actions`` rows.

Owns: what the rows of one rule's calls in a batch share (``call``: this apply,
the rule, the state it requests); a run's row ``pending`` before the call that
may change it, its one final outcome after, counted into the ``ApplyResult``
once that outcome is committed; and which runs of this apply had a call whose
answer was lost (so a later ``gone``/``skipped`` is never recorded for a run
this apply may have changed). What the file must say about the outcome (a
deleted run marked deleted) is written in the same transaction (``also``).
Must not: call the API, decide, or print.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flowsync.policy.model import SetStateRule
from flowsync.policy.planned import RuleModel
from flowsync.policy.result import ApplyResult, Outcome, RunResult
from flowsync.store import Store, audit


class Ledger:
    def __init__(
        self,
        store: Store,
        result: ApplyResult,
        *,
        api_url: str,
        policy_path: str,
        policy_sha256: str,
    ) -> None:
        self.store, self.result = store, result
        self._header = {
            "apply_id": result.apply_id,
            "api_url": api_url,
            "policy_path": policy_path,
            "policy_sha256": policy_sha256,
        }
        self.rows: set[str] = set()  # runs with a row in this apply
        self.final_outcomes: dict[str, Outcome] = {}
        # runs whose row stays pending and whose `pending` the result counts (a lost answer
        # that could not be settled): a later read-back replaces that count, never adds one
        self.counted_pending: set[str] = set()

    @property
    def apply_id(self) -> str:
        return self.result.apply_id

    def call(self, batch: int, rule: RuleModel) -> audit.Call:
        """What the rows of ``rule``'s calls in ``batch`` share: this apply, the rule, and the
        state it requests (a ``set_state`` rule; none for a delete)."""
        requested = (
            {"state": rule.state.to_api(), "force": rule.force}
            if isinstance(rule, SetStateRule)
            else None
        )
        return audit.Call(
            batch=batch,
            rule=rule.name,
            action=rule.action,
            requested_state=requested,
            **self._header,
        )

    def _insert(
        self,
        call: audit.Call,
        runs: list[tuple[str, str, str, Any]],
        held: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        audit.record_runs(self.store, call, runs, held)
        self.rows.update(r[0] for r in runs)

    def pending(
        self,
        call: audit.Call,
        guards: Mapping[str, str],
        held: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Rows for runs about to be sent (run -> the state type guarded), committed first;
        ``held``: the runs as the re-read showed them (else their rows in the file). A run
        sent again (its earlier call's answer lost, the run still unchanged) gets its row
        anew: the guard, the row and the time of this call."""
        new = [(i, t, Outcome.PENDING.value, None) for i, t in guards.items() if i not in self.rows]
        again = [
            (i, t, Outcome.PENDING.value, None)
            for i, t in guards.items()
            if i in self.rows and i not in self.final_outcomes
        ]
        with self.store.transaction():
            self._insert(call, new, held)
            if again:
                audit.record_runs(self.store, call, again, held, replace=True)

    def not_carried_out(self, call: audit.Call, ids: list[str], problem: str) -> None:
        """Runs whose call the server answered without carrying it out (a 429), to be re-checked
        and sent again after the wait: their pending rows say so now, committed before the
        wait (``failed``, ``not_carried_out``), so an apply killed in it leaves nothing for the
        next apply to read back and credit this one with. Not an outcome yet: the row is sent
        again (``pending``) or given its outcome later, and counted then."""
        runs = [i for i in ids if i in self.rows and i not in self.final_outcomes]
        reason = (
            f"the server did not carry out its call ({problem}); the apply was to wait, "
            "re-check and send it again, and stopped before that: not done; run apply again"
        )
        with self.store.transaction():
            audit.record_outcomes(
                self.store,
                call.apply_id,
                {
                    i: (Outcome.FAILED.value, {"reason": reason, "not_carried_out": True})
                    for i in runs
                },
            )

    def final(
        self,
        call: audit.Call,
        results: Mapping[str, RunResult],
        guards: Mapping[str, str],
        also: Callable[[], None] | None = None,
    ) -> None:
        """Each run's one outcome: its pending row updated, or a row inserted for a run never
        sent; ``also`` writes what the file must say about them, in the same transaction."""
        if not results:
            return
        new = [
            (i, guards.get(i) or "", r.outcome.value, r.details)
            for i, r in results.items()
            if i not in self.rows
        ]
        inserted = {n[0] for n in new}
        with self.store.transaction():
            self._insert(call, new)
            audit.record_outcomes(
                self.store,
                self.apply_id,
                {i: (r.outcome.value, r.details) for i, r in results.items() if i not in inserted},
            )
            if also is not None:
                also()
        for i, r in results.items():
            if r.outcome is not Outcome.PENDING:
                self.final_outcomes[i] = r.outcome
                self.counted_pending.discard(i)
            else:
                self.counted_pending.add(i)
            self.result.add(call.rule, r.outcome)

    def open_rows(self) -> list[str]:
        """Runs of this apply whose row is still pending."""
        return [i for i in self.rows if i not in self.final_outcomes]
