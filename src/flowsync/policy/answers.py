"""What the server showed and answered, and what it means for each run of an apply.

Owns: ``Seen`` (a run's state as one read showed it), the typed answers of one
call (``Acted``, ``Throttled``, ``Lost``, ``Refused``, ``Partial``; ``from_error``: the
answer of a call that raised) and the values apply's steps pass on (``Batch``, ``Fresh``, ``Call``, ``Decided``, ``Verdict``), and
the classification of a run from them: the server's per-run answer
(``answered``), a run the answer did not act on (``classify_unanswered``), a run
whose call's answer was lost (``classify_lost``), and what changed in a run the
re-check dropped (``changes``). Pure, but for reading the file's rows of dropped
runs (``file_rows``). Must not: call the API, write the store, or print.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flowsync.errors import ApiError, NotSentError, ThrottledError, UncertainError
from flowsync.policy.model import SetStateRule
from flowsync.policy.plan import Decision, RuleModel
from flowsync.policy.result import SET_STATE_STATUS, Outcome, RunResult
from flowsync.store import Store

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


# -- what the server showed ------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A run's state as one read from the server showed it."""

    state_type: str | None
    state_id: str | None
    state_name: str | None
    # The whole run as that read returned it (the audit's row of the run, without a
    # lookup in the file); None where a Seen is rebuilt from the audit.
    row: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """The state as Prefect names it, type and name: ``SCHEDULED (Late)``."""
        if self.state_name and self.state_name.upper() != self.state_type:
            return f"{self.state_type} ({self.state_name})"
        return str(self.state_type)

    @classmethod
    def of(cls, row: dict[str, Any]) -> Seen:
        state = row.get("state") or {}
        return cls(
            state_type=row.get("state_type") or state.get("type"),
            state_id=str(row.get("state_id") or state.get("id") or "") or None,
            state_name=row.get("state_name") or state.get("name"),
            row=row,
        )


# Why a run sent by a call is `gone`: another client deleted it while the call was out.
GONE_DURING_THE_CALL = "deleted on the server during the call, not by this apply"


def classify_lost(
    action: str,
    requested: str | None,
    before: Seen,
    after: Seen | None,
    history: list[dict[str, Any]] | None = None,
    lost: str = "the call's answer was lost",
) -> RunResult | None:
    """A run sent by a call whose answer was lost: what the server shows now says what happened.

    ``before`` is the read right before that call, ``after`` a read since
    (None: gone); ``history`` the run's states, oldest first, for a set_state
    run that now holds another state. None means the server shows the run
    untouched: it may be re-checked and sent again. ``lost``: why the answer says nothing
    of the run, as its audit row tells.
    """
    if after is None:
        if action == "delete":
            return RunResult(
                Outcome.DELETED,
                {"evidence": f"present right before the call, gone after it ({lost})"},
            )
        return RunResult(Outcome.GONE, {"reason": GONE_DURING_THE_CALL})
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
                "reason": f"its state changed during the call ({before.label} -> {after.label}) and its "
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
            "reason": f"its state changed during the call ({before.label} -> {after.label}) "
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
                "reason": f"its state changed between the re-read and the call ({before.label} -> "
                f"{after.label}); the state guard held",
                "check": "state guard",
                "state_type_now": after.state_type,
            },
        )
    return RunResult(Outcome.FAILED, {"reason": "the server did not act on it; run apply again"})


def answered(
    rule: RuleModel, ids: list[str], answer: dict[str, Any]
) -> tuple[dict[str, RunResult], list[str]]:
    """The runs the server's answer acted on (or refused), and notes on anything odd in it."""
    if isinstance(rule, SetStateRule):
        results = answer.get("results")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise UncertainError.unreadable(
                "POST /flow_runs/bulk_set_state", "a `results` list of objects"
            )
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
                    "state": answered_state(state),
                },
            )
        return out, notes
    deleted = answer.get("deleted")
    if not isinstance(deleted, list):
        raise UncertainError.unreadable("POST /flow_runs/bulk_delete", "a `deleted` list")
    got = {str(i) for i in deleted}
    stray = sorted(got.difference(ids))
    notes = [f"server reported deleting runs that were not asked for: {stray}"] if stray else []
    return {i: RunResult(Outcome.DELETED) for i in ids if i in got}, notes


def unclear(result: RunResult) -> str | None:
    """Why a set_state answer says nothing sure of its run (to be read back), or None.

    An ABORT without a state: Prefect sets each run of a bulk_set_state in a transaction of
    its own and answers an error inside it so, the transaction committing what was written
    before the error (a run deleted after the server read the batch is "not found"). A status
    this flowsync does not know: it says nothing either way."""
    details = result.details or {}
    if result.outcome is Outcome.ABORTED and not details.get("state"):
        return "the server answered ABORT without a state, yet the run changed during the call"
    status = details.get("status")
    if result.outcome is Outcome.FAILED and "status" in details and status not in SET_STATE_STATUS:
        return (
            f"the server answered status {status!r}, which this flowsync does not know, and "
            "the run changed during the call"
        )
    return None


def judged_after(result: RunResult, judged: RunResult | None) -> RunResult:
    """An unclear answer (``unclear``) for a run whose state changed during the call: ``judged``
    (``classify_lost`` with ``unclear``'s words) from what the server shows, the server's answer
    kept in the details; the answer stands when the run shows no change."""
    if judged is None:
        return result
    return RunResult(judged.outcome, {**(judged.details or {}), "answer": result.details})


def gone_during_the_call(result: RunResult) -> RunResult:
    """An unclear answer (``unclear``) whose run is no longer on the server: deleted by someone
    else during the call, not aborted (the server's answer is kept in the details)."""
    return RunResult(
        Outcome.GONE,
        {
            "reason": GONE_DURING_THE_CALL,
            "answer": result.details,
        },
    )


def answered_state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The state a set_state answer carries, as its audit row keeps it (None: none)."""
    if not state:
        return None
    return {"type": state.get("type"), "name": state.get("name"), "id": state.get("id")}


def set_instead(result: RunResult, before: Seen | None) -> RunResult:
    """A set_state answer REJECT that carries a state other than the one the run had right
    before the call (``before``): Prefect's orchestration rules set that state instead of the
    requested state (``REPLACED``). A REJECT that left the run as it was answers the state it
    has; an answer without state ids proves nothing either way (left ``REJECTED``)."""
    if result.outcome is not Outcome.REJECTED or before is None or before.state_id is None:
        return result
    details = result.details or {}
    state = details.get("state") or {}
    if state.get("id") is None or str(state["id"]).lower() == before.state_id.lower():
        return result
    label = Seen(state.get("type"), None, state.get("name")).label
    return RunResult(
        Outcome.REPLACED,
        {
            **details,
            "reason": f"answered REJECT with a new state: Prefect's orchestration rules set "
            f"{label} in place of the requested state (or, rarely, another client set it while "
            "the call ran)",
        },
    )


def changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, list[Any]]:
    if not before or not after:
        return {}
    return {c: [before[c], after[c]] for c in WATCHED if before.get(c) != after.get(c)}


def file_rows(store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
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


def with_lost(result: RunResult, lost: str | None) -> RunResult:
    """The audit of a run sent again after a lost answer says so."""
    if lost is None:
        return result
    return RunResult(result.outcome, {**(result.details or {}), "after_lost_answer": lost})


# -- the steps' typed values --------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One batch of an apply: runs of one rule, of one state type when planned (<= 50)."""

    rule: RuleModel
    state_type: str  # every run in the batch had this state type when planned
    ids: list[str]
    deployments: dict[str, str | None] = field(default_factory=dict)  # run -> its deployment


@dataclass(frozen=True)
class Fresh:
    """Step 1: the batch's runs as the server showed them (absent: gone), and when."""

    seen: dict[str, Seen]
    before: dict[str, dict[str, Any]]  # file rows the read changed, as they were
    answered_at: float  # monotonic time the last read of the step answered
    decision: Decision  # the policy decided over the file after that read
    # the runs the decision ranks above the batch's (keep_newest), as the read showed them
    ranked: dict[str, Seen] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One call about to be sent: runs that all have ``state_type`` and ``state_name`` right
    now (the bulk call's guard: a run that moved on to another state, of the same type too,
    such as Late back to Scheduled, is refused by the server)."""

    state_type: str
    ids: list[str]
    state_name: str | None = None


@dataclass(frozen=True)
class Decided:
    """Step 2: the calls to send, and the final outcome of every run not sent."""

    calls: list[Call]
    final: dict[str, RunResult]


@dataclass(frozen=True)
class Acted:
    """The server answered: its per-run results (runs it did not act on are absent)."""

    results: dict[str, RunResult]
    notes: list[str]


@dataclass(frozen=True)
class Throttled:
    """Nothing was done (429, connection never made): wait this long, then re-check.
    ``at``: when the answer came (``time.monotonic``): the wait counts from then."""

    wait: float | None
    problem: str
    at: float = field(default_factory=time.monotonic, compare=False)

    def left(self) -> float | None:
        """What is left of the wait now (None: the server named none)."""
        return None if self.wait is None else self.wait - (time.monotonic() - self.at)


@dataclass(frozen=True)
class Lost:
    """No usable answer (5xx, dropped connection, timeout): the server may have acted.
    ``finished``: it did answer (a status), so it is no longer working on the call."""

    problem: str
    finished: bool


@dataclass(frozen=True)
class Refused:
    """The server refused the call (4xx): it did nothing."""

    error: ApiError


@dataclass(frozen=True)
class Partial:
    """Per-run calls (a server without the bulk endpoints) that stopped part way: the runs
    answered, and what happened to the call of ``stopped_at`` (the runs after it were not sent)."""

    results: dict[str, RunResult]
    stopped_at: int
    answer: Throttled | Lost | Refused


Answer = Acted | Throttled | Lost | Refused | Partial


def from_error(e: ApiError) -> Throttled | Lost | Refused:
    """What a call that raised ``e`` (not an ``AuthError``) did: nothing yet (429, or never
    sent: re-check, then send again), maybe something (its answer was lost), or refused."""
    if isinstance(e, ThrottledError):
        return Throttled(e.retry_after, "HTTP 429")
    if isinstance(e, NotSentError):
        return Throttled(None, str(e))
    if isinstance(e, UncertainError):
        return Lost(e.problem, finished=e.status is not None)
    return Refused(e)


@dataclass(frozen=True)
class Verdict:
    """Step 4: each run's outcome, the runs to re-check and send again, and how long to wait."""

    results: dict[str, RunResult]
    again: list[str] = field(default_factory=list)
    wait: float | None = None
    stop: str | None = None  # the apply cannot go on: why
