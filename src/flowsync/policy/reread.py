"""Step 1 of a batch: the server's rows for every run its decision rests on, and the decision.

Owns, for the ``Applier`` (``policy/batch.py``): the re-read right before a call
(``reread``): the batch's runs; for rules ranked by ``keep_newest``, the runs that
outrank them in their deployments (read until every run the decision keeps was read
in this step, at most ``RANK_ROUNDS`` rounds; a batch still unconfirmed then is not
sent); for rules whose SQL reads other runs, and for rules acting on runs an earlier
keep_newest rule keeps (in the plan, or once the re-read shows it), every run with a state
change since the last pull, new runs included (state events, ``_catch_up``); for rules whose SQL may
read flows or deployments, those of the runs read (``RunReader.read_lookups``: their
changes emit no event). What changed is written to the file and a run (flow,
deployment) the server no longer has is marked deleted (``RunReader``). Then the
policy decided again over the file for the batch (``decide_batch``): an unranked
batch from the rows the re-read just returned, staged as the file holds them.

Which batches decide a run from its own row (``own_rows``: not ranked, no rule up to
it reading other runs, none of its runs with a lost answer, bulk calls), so that they
may be decided while another batch's call is in flight; and of those, which read
nothing but their runs' rows (``ahead_ok``: no rule up to it reading flows or
deployments), so that a decision made ahead over the file (``policy/ahead.py``) is
the decision the re-read would give whenever the re-read leaves the batch's rows in
the file as they were. Must not: send a call, write the audit, print, or import httpx/duckdb.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from flowsync.api import PrefectClient
from flowsync.errors import PolicyError
from flowsync.policy.ahead import AHEAD_MAX_AGE, DecidedAhead
from flowsync.policy.answers import Batch, Fresh, Seen, file_rows
from flowsync.policy.plan import KEEP_NEWEST, Decision, Plan, RuleModel, Scope, decide_scope
from flowsync.policy.result import ApplyResult
from flowsync.store import SandboxedWriter, Store
from flowsync.store.synced_tables import Stamp
from flowsync.sync import RunReader, events_cover, pulled_from

__all__ = [
    "EVENTS_OVERLAP",
    "RANK_ROUNDS",
    "UNCONFIRMED",
    "Rereader",
    "catches_up",
    "changed_since_pull",
]

# State events reach the server's store a few seconds late: a catch-up re-reads this far back.
EVENTS_OVERLAP = timedelta(minutes=2)

# A ranked batch's re-read: rounds of reading the runs its decision now keeps (each round reads
# every run newly kept). A batch whose kept runs still moved after this many rounds (a bulk retry
# of many newer runs since the pull) is not sent: its decision rests on runs it never read.
RANK_ROUNDS = 16
UNCONFIRMED = (
    "keep_newest not confirmed: the newer runs it keeps changed on the server since the pull; "
    "pull, then apply again"
)


def catches_up(rules: Sequence[RuleModel], reads_other_runs: Mapping[str, str]) -> str | None:
    """Why apply may read every run's state changes since the pull before deciding an enabled
    rule of ``rules`` (``Rereader.reread``), as "rule X ...", so ``plan --refresh`` reads them
    too (None: it never does): the rule's SQL reads other runs, or it follows an enabled
    keep_newest rule, which may keep (or take) its runs by other runs' states."""
    keep: str | None = None
    for rule in rules:
        if not rule.enabled:
            continue
        if rule.name in reads_other_runs:
            return f"rule {rule.name!r} reads other runs"
        if keep is not None:
            return (
                f"rule {rule.name!r} acts on runs rule {keep!r} may keep by keep_newest, "
                "which rests on other runs"
            )
        if rule.keep_newest is not None:
            keep = rule.name
    return None


def events_gone(client: PrefectClient, last: datetime | None, now: datetime) -> str | None:
    """Why the server may no longer hold the state events since ``last``, the file's last
    pull (None: it holds them), for apply's catch-up and ``plan --refresh``."""
    if last is None:
        return "the file records no pull"
    return events_cover(client, last - EVENTS_OVERLAP, now)


def changed_since_pull(client: PrefectClient, store: Store, why: str) -> list[str]:
    """The runs with a state change since the file's last pull, runs created since included
    (the server's state events), for ``plan --refresh`` of rules apply decides on them
    (``why``: ``catches_up``'s reason): what apply's catch-up re-reads before deciding
    them. ``PolicyError`` when the server may no longer hold those events (apply refuses
    the rule then)."""
    now = client.server_now()
    last = pulled_from(store)
    gone = events_gone(client, last, now)
    if last is None or gone is not None:
        raise PolicyError(
            f"{why}, whose state changes since the last pull "
            f"`plan --refresh` and apply read from the server's events, but {gone}; run "
            "`flowsync pull`, then plan again."
        )
    return sorted(client.changed_flow_runs(last - EVENTS_OVERLAP, now + timedelta(minutes=5)))


class Rereader:
    """Step 1 for the batches of one apply, and what it keeps between them."""

    def __init__(
        self,
        client: PrefectClient,
        store: SandboxedWriter,
        plan: Plan,
        result: ApplyResult,
        reader: RunReader,
        lost: dict[str, Any],
    ) -> None:
        self.client, self.store, self.plan, self.result = client, store, plan, result
        self.reader = reader
        self.lost = lost  # run -> (problem, state before): runs whose call's answer was lost
        self.ranked = self._ranked_rules()
        self.per_run = False  # the server lacks the bulk endpoints: one call per run
        # state events read up to here (rules reading others), by the server's clock
        self.caught_up: datetime | None = None
        # the server's clock less ours (``set_server_clock``): event times are the server's
        self.clock_offset = timedelta(0)

    def set_server_clock(self, server_now: datetime | None) -> None:
        """The server's time now (its ``Date``, ``PrefectClient.check``): the catch-up's event
        windows are taken on its clock, never on this machine's (None: the server sent no
        ``Date``; this machine's clock stands in)."""
        if server_now is not None:
            self.clock_offset = server_now - datetime.now(timezone.utc)

    def server_now(self) -> datetime:
        """The server's time now, as far as its ``Date`` (whole seconds) tells."""
        return datetime.now(timezone.utc) + self.clock_offset

    def _ranked_rules(self) -> set[str]:
        """Rules whose decision ranks runs against each other: keep_newest at or before them."""
        out, seen_keep = set(), False
        for rule in self.plan.policy.policy.rules:
            seen_keep = seen_keep or (rule.enabled and rule.keep_newest is not None)
            if seen_keep:
                out.add(rule.name)
        return out

    def reads_others(self, rule: RuleModel) -> bool:
        """Some rule up to and including ``rule`` decides a run from other runs' rows."""
        names = [r.name for r in self.plan.policy.policy.rules]
        upto = names[: names.index(rule.name) + 1]
        return any(n in self.plan.reads_other_runs for n in upto)

    def kept_before(self, rule: RuleModel, ids: list[str]) -> RuleModel | None:
        """An earlier rule whose keep_newest kept some of ``ids`` in the confirmed plan (None:
        none). ``rule`` may act on such a run only while that rule still keeps it, which rests
        on other runs: a newer run that rule selects now (one that failed since the pull, or
        is new) makes it that rule's, and ``rule`` must leave it."""
        for earlier in self.plan.policy.policy.rules:
            if earlier.name == rule.name:
                return None
            if (
                earlier.enabled
                and earlier.keep_newest is not None
                and self.plan.skipped_for(earlier, KEEP_NEWEST, set(ids))
            ):
                return earlier
        return None

    def reads_lookups(self, rule: RuleModel) -> frozenset[str]:
        """Which of flows and deployments the rules up to and including ``rule`` may read."""
        names = [r.name for r in self.plan.policy.policy.rules]
        upto = names[: names.index(rule.name) + 1]
        return frozenset().union(*(self.plan.reads_lookups.get(n, frozenset()) for n in upto))

    def own_rows(self, batch: Batch | None) -> bool:
        """The batch's decision reads each run's own row (and maybe its flow and deployment)
        only: no call of another batch changes what it reads, so it may be made while that
        call is in flight."""
        return (
            batch is not None
            and bool(batch.ids)
            and not self.per_run
            and batch.rule.name not in self.ranked
            and not self.reads_others(batch.rule)
            and not any(i in self.lost for i in batch.ids)
        )

    def ahead_ok(self, batch: Batch | None) -> bool:
        """``own_rows``, and nothing but the runs' rows: a decision made over the file before
        the re-read holds when the re-read leaves those rows as they were."""
        return batch is not None and self.own_rows(batch) and not self.reads_lookups(batch.rule)

    def unchanged(self, rows: dict[str, dict[str, Any]]) -> bool:
        """The server still shows these runs (id -> the row it sent before) as it did: read
        again right before a call, nothing written (``RunReader.unchanged``)."""
        self.result.rereads += 1
        return self.reader.unchanged(rows)

    def read(
        self,
        ids: list[str],
        before: dict[str, dict[str, Any]],
        stamps: dict[str, Stamp] | None = None,
    ) -> dict[str, Seen]:
        """These runs from the server, what changed written to the file, the file's rows it
        changed kept in ``before``; a run not returned is absent. ``stamps``: the file's
        stamps of these runs, read when nothing has written them since."""
        self.result.rereads += 1

        def keep_before(changed: list[str]) -> None:
            before.update(
                {k: v for k, v in file_rows(self.store, changed).items() if k not in before}
            )

        rows = self.reader.read(ids, keep_before, stamps)
        return {i: Seen.of(row) for i, row in rows.items()}

    def check_catch_up(self) -> None:
        """Before the first call: a rule reading other runs is decided on their states as the
        server's state events since the last pull show them (``_catch_up``). Refuses the apply
        (``PolicyError``) when those events may be gone: the decision would rest on states the
        catch-up cannot see."""
        needs = [rp.rule for rp in self.plan.rules if rp.planned and self.reads_others(rp.rule)]
        what = "reads other runs"
        if not needs:
            for rp in self.plan.rules:
                if not rp.planned or rp.rule.name not in self.ranked:
                    continue  # (no keep_newest rule before it)
                kept = next((k for ids in rp.ids() if (k := self.kept_before(rp.rule, ids))), None)
                if kept is not None:
                    needs = [rp.rule]
                    what = f"acts on runs rule {kept.name!r} keeps by keep_newest, which rests on other runs"
                    break
        if not needs:
            return
        why = self._events_gone()
        if why is not None:
            raise PolicyError(
                f"rule {needs[0].name!r} {what}, whose state changes since the last pull "
                f"apply reads from the server's events, but {why}; run `flowsync pull`, then apply "
                "again (nothing was sent)."
            )

    def _events_gone(self) -> str | None:
        """Why the server may no longer hold the state events since the last pull (None: it
        holds them, or a catch-up of this apply already read them)."""
        if self.caught_up is not None:
            return None
        return events_gone(self.client, pulled_from(self.store), self.server_now())

    def _catch_up(self, lookups: frozenset[str]) -> None:
        """Re-read every run with a state change since the last catch-up (or pull) into the
        file: runs created since then too, which the decision may count (``lookups``: with
        their flows and deployments)."""
        now = self.server_now()
        since = self.caught_up or pulled_from(self.store) or now - timedelta(days=6)
        since = since - EVENTS_OVERLAP
        changed = self.client.changed_flow_runs(since, now + timedelta(minutes=5))
        if changed:
            got = self.read(sorted(changed), {})
            if lookups:
                self.reader.read_lookups(
                    (s.row for s in got.values() if s.row is not None), lookups
                )
        self.caught_up = now

    def reread(self, batch: Batch, todo: list[str], ahead: DecidedAhead | None = None) -> Fresh:
        """Step 1: the server's current rows for every run the decision rests on, into the file.

        ``ahead``: the batch decided over the file before this re-read (``policy/ahead.py``),
        used only if this re-read left every run of the batch in the file as it was, and
        answered within ``AHEAD_MAX_AGE`` of that decision."""
        # (Runs an earlier rule kept in the plan: which it keeps rests on other runs' states too.)
        caught = self.reads_others(batch.rule) or self.kept_before(batch.rule, todo) is not None
        before: dict[str, dict[str, Any]] = {}
        fresh = self._reread(batch, todo, ahead, before, caught)
        kept = [
            i
            for i, why in fresh.decision.reasons.items()
            if why is None and i in fresh.decision.ranked_above
        ]
        if caught or not kept:
            return fresh
        # Runs the plan gave this rule unkept that an earlier keep_newest rule keeps now (a
        # re-read moved them into its ranking): this rule may act on them only while that rule
        # keeps them, which rests on other runs' state changes since the pull (a newer run
        # that failed since, or is new, makes them that rule's). Read those, then again.
        why = self._events_gone()
        if why is None:
            return self._reread(batch, todo, None, before, True)
        gone = (
            "kept by an earlier rule's keep_newest, which rests on other runs' state changes "
            f"since the last pull, but {why}; pull, then apply again"
        )
        reasons = {i: gone if i in kept else r for i, r in fresh.decision.reasons.items()}
        return replace(fresh, decision=replace(fresh.decision, reasons=reasons))

    def _reread(
        self,
        batch: Batch,
        todo: list[str],
        ahead: DecidedAhead | None,
        before: dict[str, dict[str, Any]],
        catch_up: bool,
    ) -> Fresh:
        """``reread``'s reads and decision (``catch_up``: other runs' state changes first)."""
        seen: dict[str, Seen] = {}
        read: set[str] = set()
        answered: float | None = None
        if catch_up:
            self._catch_up(self.reads_lookups(batch.rule))
        want = set(todo)
        if batch.rule.name in self.ranked:
            # The runs that outrank the batch as the file says now; read with the batch.
            want |= self.decide_batch(batch, todo).ranked_above
        for _ in range(RANK_ROUNDS):
            got = self.read(sorted(want - read), before, ahead.stamps if ahead else None)
            if answered is None:  # the batch's own runs: its window counts from here
                answered = self.reader.answered_at
            # Made over the very rows the file holds now (the re-read changed none of
            # them), and recently enough that a rule reading the clock decides the same.
            made_ahead = (
                ahead.decision
                if ahead and not self.reader.changed and answered - ahead.made_at <= AHEAD_MAX_AGE
                else None
            )
            ahead = None
            read |= want
            seen.update(got)
            lookups = self.reads_lookups(batch.rule)
            if lookups:
                # Their flows or deployments as the server has them now, like the runs.
                self.reader.read_lookups(
                    (s.row for s in got.values() if s.row is not None), lookups
                )
            for gone in want - set(got):
                seen.pop(gone, None)
            decision = made_ahead or self.decide_batch(batch, todo, seen)
            self.result.decided_ahead += made_ahead is not None
            # Reads may have moved the ranks: read what the decision now keeps, until it
            # was all read.
            want = set(decision.ranked_above) - read
            if not want:
                break
        assert answered is not None  # RANK_ROUNDS >= 1
        if want:
            # What the decision keeps was never read: send none of the batch.
            decision = replace(
                decision,
                reasons={
                    i: UNCONFIRMED if why is None else why for i, why in decision.reasons.items()
                },
            )
        return Fresh(
            {i: seen[i] for i in todo if i in seen},
            before,
            answered,
            decision,
            {i: seen[i] for i in decision.ranked_above if i in seen},
        )

    def decide_ahead(self, batches: list[Batch]) -> DecidedAhead:
        """``batches`` (of one rule whose decision reads each run's own row) decided over the
        file as it is, in one decision, with their runs' stamps in the file (before the first
        of them is re-read, while the call before it may be in flight)."""
        made_at = time.monotonic()
        return DecidedAhead(
            self.decide_batch(batches[0], [i for b in batches for i in b.ids]), made_at
        )

    def decide_batch(
        self, batch: Batch, todo: list[str], seen: dict[str, Seen] | None = None
    ) -> Decision:
        """The policy decided again over the file for ``todo`` (``plan.decide_scope``); ``seen``:
        the rows the re-read just returned, read in place of the file's for an unranked batch."""
        self.result.decisions += 1
        ranked = batch.rule.name in self.ranked
        deployments = tuple(sorted({batch.deployments.get(i) for i in todo}, key=str))
        scope = Scope(tuple(todo), deployments if ranked else ())
        # Unranked, the batch's own rows are all the decision reads besides the rules' SQL:
        # the ones just read (and written where they differed), not looked up in the file.
        held = (
            [row for i in todo if i in seen and (row := seen[i].row) is not None]
            if seen is not None and not ranked
            else ()
        )
        return decide_scope(self.store, self.plan, batch.rule, scope, held)
