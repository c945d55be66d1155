"""What an apply did: one ``Outcome`` per run, and the whole apply's status.

Owns: the outcome vocabulary of ``policy_actions.outcome`` and of apply's JSON
and summary, which outcomes count as done or failed, and ``ApplyResult``
(success / partial / error, as pipx's ``result.py``). Each run's outcome is
decided once, by ``apply``'s classification step, and written once. Must not:
call the API, touch the store, or print.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    """The one outcome of a run in one apply (the ``policy_actions.outcome`` values)."""

    PENDING = (
        "pending"  # sent, answer not recorded (the process ended, or the server could not be read)
    )
    DELETED = "deleted"  # the server deleted it (its answer, or gone after a lost answer)
    ACCEPTED = (
        "accepted"  # the server set the state (its answer, or the new state after a lost answer)
    )
    REJECTED = "rejected"  # set_state: orchestration rules refused the transition
    # set_state: orchestration rules refused the requested state and set another one instead
    # (details.state: Cancelled for Cancelling on a run with no infrastructure, AwaitingRetry
    # for Failed on a run with retries left): changed, not as requested
    REPLACED = "replaced"
    ABORTED = "aborted"  # set_state: the server aborted (e.g. database is locked)
    WAIT = "wait"  # set_state: the server asked to wait
    SKIPPED = "skipped"  # the re-check right before (or during) the call dropped it; never changed
    GONE = "gone"  # no longer on the server, and not deleted by this apply
    FAILED = "failed"  # not changed by the server; run apply again

    @property
    def done(self) -> bool:
        return self in (Outcome.DELETED, Outcome.ACCEPTED)

    @property
    def failed(self) -> bool:
        """Not done, and not because a guard held: the apply exits 9."""
        return self in (
            Outcome.PENDING,
            Outcome.REJECTED,
            Outcome.REPLACED,
            Outcome.ABORTED,
            Outcome.WAIT,
            Outcome.FAILED,
        )


# The ``policy_actions.outcome`` values this flowsync writes: a row with another is a newer
# flowsync's (``audit.unresolved``), left as it is, its run not sent.
KNOWN_OUTCOMES = frozenset(o.value for o in Outcome)


# The server's per-run status in a bulk_set_state answer.
SET_STATE_STATUS = {
    "ACCEPT": Outcome.ACCEPTED,
    "REJECT": Outcome.REJECTED,
    "ABORT": Outcome.ABORTED,
    "WAIT": Outcome.WAIT,
}


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    details: dict[str, Any] | None = None


@dataclass
class ApplyResult:
    apply_id: str
    policy_sha256: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> outcome -> runs
    errors: list[str] = field(default_factory=list)
    refreshed: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    calls: int = 0  # bulk calls sent (a lost answer resolved and resent counts twice)
    rereads: int = 0  # read-by-id requests before and after calls
    decisions: int = 0  # times the policy was decided again over the file (per batch, scoped)
    # batches sent on the decision made while the call before them was in flight
    decided_ahead: int = 0
    resolved_earlier: int = 0  # pending runs of earlier applies read back and settled
    # the first batch whose call's answer the server lost (one call out at a time after it)
    one_call_after: int | None = None
    path: str = "bulk"  # bulk calls, or per-run calls on a server without them (and why)
    # seconds from the re-read's answer to the call being sent, one per call
    windows: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def new(cls, policy_sha256: str = "") -> ApplyResult:
        """An empty result with a new apply id (the policy's hash is set when it is planned)."""
        return cls(apply_id=str(uuid.uuid4()), policy_sha256=policy_sha256)

    def add(self, rule: str, outcome: Outcome, n: int = 1) -> None:
        per = self.counts.setdefault(rule, {})
        per[outcome.value] = per.get(outcome.value, 0) + n

    def _total(self, test: str) -> int:
        return sum(
            n for per in self.counts.values() for o, n in per.items() if getattr(Outcome(o), test)
        )

    @property
    def failed(self) -> int:
        return self._total("failed")

    @property
    def done(self) -> int:
        return self._total("done")

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
            "calls": self.calls,
            "rereads": self.rereads,
            "decisions": self.decisions,
            "decided_ahead": self.decided_ahead,
            "resolved_earlier": self.resolved_earlier,
            "one_call_at_a_time_after_batch": self.one_call_after,
            "path": self.path,
            "reread_to_call_seconds": {
                "p50": _quantile(self.windows, 0.5),
                "p99": _quantile(self.windows, 0.99),
                "max": round(max(self.windows), 4) if self.windows else None,
            },
            "seconds": round(self.seconds, 3),
            "rules": self.counts,
            "errors": self.errors,
            "refreshed": self.refreshed,
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
