"""The ``policy_actions`` audit table: what ``flowsync apply`` sent, and what the server said.

Owns: writing one row per run per apply: before the API call (outcome
``pending``, with the run's row as just re-read, as JSON) and recording the
answer after it, one statement per call; or, for a run the re-check dropped,
its final outcome at once. A crash between the two leaves ``pending`` rows:
sent, answer unknown; ``unresolved`` finds them for the next apply, which
reads the runs back and settles them under the apply that sent them. Writes
join the caller's transaction (``Store.atomic``), so an outcome and the file's
record of it commit together. Policy code runs its other SQL (rule SQL, plan
reads) through ``Store.execute``. Must not: decide what to apply or call the API.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from flowsync.store.connect import Store
from flowsync.store.synced_tables import held_rows, packed
from flowsync.store.tables import FLOW_RUNS


@dataclass(frozen=True)
class Call:
    """What the rows of one call's runs share: the apply, its batch, rule and request."""

    apply_id: str
    api_url: str
    policy_path: str
    policy_sha256: str
    batch: int
    rule: str
    action: str
    requested_state: Mapping[str, Any] | None


def record_runs(
    store: Store,
    call: Call,
    runs: Sequence[tuple[str, str, str, Any]],
    held: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    replace: bool = False,
) -> None:
    """Insert one row per run of ``call``, with the run's row as JSON.

    ``runs`` holds (id, state type guarded or last known, outcome, details):
    outcome ``pending`` for a run about to be sent (its answer is recorded by
    ``record_outcomes``), or the final outcome of a run that will not be sent.
    ``held``: the runs as the re-read right before just showed them (API objects),
    written as the file holds such a row; a run not in it gets its row in the file.
    ``replace``: the runs are sent again by this apply; their pending rows are replaced, so a
    row says what the last call sent (its guard, the run's row before it, when it was sent):
    what the next apply settles a kill -9 by. (A row whose call the server did not carry
    out, a 429, says so until then: ``Ledger.not_carried_out``.)
    """
    if not runs:
        return
    shown = {str(r[0]): held.get(r[0]) for r in runs} if held else {}
    with store.atomic():
        if replace:
            store.execute(
                "DELETE FROM policy_actions WHERE apply_id = ? AND (outcome = 'pending' "
                "OR details->>'not_carried_out' = 'true') "
                "AND flow_run_id IN (SELECT unnest(CAST(? AS UUID[])))",
                [call.apply_id, [str(r[0]) for r in runs]],
            )
        for part in _by_size(runs, shown):
            _insert_runs(store, call, part, shown)


# The most JSON of the runs' rows one audit INSERT stages: each row is cast, then written
# again as JSON (``run_row``), beside the rows the re-read wrote into the file: 4 MB a part
# ran out of memory under the writer's 64 MB cap, 1 MB did not (50 runs of 200 KB).
AUDIT_STAGE_BYTES = 2**20


def _by_size(
    runs: Sequence[tuple[str, str, str, Any]], shown: Mapping[str, Mapping[str, Any] | None]
) -> list[list[tuple[str, str, str, Any]]]:
    """``runs`` in parts whose held rows hold at most ``AUDIT_STAGE_BYTES`` of JSON each:
    runs with large parameters are staged a part at a time (the writer's memory cap);
    ordinary runs (~1-2 KB), one part (measuring 50 costs ~0.07 ms)."""
    if not any(row is not None for row in shown.values()):
        return [list(runs)]
    sizes = [
        len(orjson.dumps(row, default=str)) if (row := shown.get(str(r[0]))) is not None else 0
        for r in runs
    ]
    return packed(runs, sizes, AUDIT_STAGE_BYTES)


def _insert_runs(
    store: Store,
    call: Call,
    runs: Sequence[tuple[str, str, str, Any]],
    shown: Mapping[str, Mapping[str, Any] | None],
) -> None:
    objects = [dict(row) for r in runs if (row := shown.get(str(r[0]))) is not None]
    others = [str(r[0]) for r in runs if shown.get(str(r[0])) is None]
    with contextlib.ExitStack() as stack:
        parts, params = [], []
        if objects:
            parts.append(stack.enter_context(held_rows(store, FLOW_RUNS, objects, "_audit_held")))
        if others:
            parts.append("SELECT * FROM flow_runs WHERE id IN (SELECT unnest(CAST(? AS UUID[])))")
            params.append(others)
        store.execute(
            f"""
            INSERT INTO policy_actions (apply_id, batch, sent_at, api_url, policy_path, policy_sha256,
                rule, action, requested_state, flow_run_id, state_type_before, outcome, details, run_row)
            SELECT ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS JSON), b.id, b.state_type, b.outcome,
                   CAST(b.details AS JSON), CASE WHEN r.id IS NOT NULL THEN to_json(r) END
            FROM (SELECT unnest(CAST(? AS UUID[])) AS id, unnest(CAST(? AS VARCHAR[])) AS state_type,
                         unnest(CAST(? AS VARCHAR[])) AS outcome, unnest(CAST(? AS VARCHAR[])) AS details) b
            LEFT JOIN ({" UNION ALL BY NAME ".join(parts)}) r ON r.id = b.id
            """,
            [
                call.apply_id,
                call.batch,
                datetime.now(timezone.utc),
                call.api_url,
                call.policy_path,
                call.policy_sha256,
                call.rule,
                call.action,
                json.dumps(call.requested_state) if call.requested_state is not None else None,
                [str(r[0]) for r in runs],
                [r[1] for r in runs],
                [r[2] for r in runs],
                [json.dumps(r[3], default=str) if r[3] is not None else None for r in runs],
                *params,
            ],
        )


def record_outcomes(store: Store, apply_id: str, outcomes: Mapping[str, tuple[str, Any]]) -> None:
    """Set each run's outcome and the server's details (any JSON value) for this apply."""
    if not outcomes:
        return
    details = [json.dumps(d, default=str) if d is not None else None for _, d in outcomes.values()]
    with store.atomic():
        store.execute(
            """
            UPDATE policy_actions SET outcome = o.outcome, details = CAST(o.details AS JSON), answered_at = ?
            FROM (SELECT unnest(CAST(? AS UUID[])) AS id, unnest(CAST(? AS VARCHAR[])) AS outcome,
                         unnest(CAST(? AS VARCHAR[])) AS details) o
            WHERE policy_actions.apply_id = ? AND policy_actions.flow_run_id = o.id
            """,
            [
                datetime.now(timezone.utc),
                list(outcomes),
                [o for o, _ in outcomes.values()],
                details,
                apply_id,
            ],
        )


def outcome_counts(store: Store, apply_id: str) -> dict[tuple[str, str], int]:
    """(rule, outcome) -> runs, for one apply."""
    rows = store.execute(
        "SELECT rule, outcome, count(*) FROM policy_actions WHERE apply_id = ? GROUP BY ALL",
        [apply_id],
    ).rows()
    return {(str(r), str(o)): int(n) for r, o, n in rows}


@dataclass(frozen=True)
class PendingRow:
    """A run an earlier apply sent whose answer was never recorded (it was killed, or lost it)."""

    apply_id: str
    flow_run_id: str
    action: str
    requested_type: str | None
    state_type_before: str
    state_id_before: str | None
    sent_at: datetime
    rule: str
    outcome: str = "pending"


def unresolved(
    store: Store, *, besides: str | None = None, known: Collection[str] | None = None
) -> list[PendingRow]:
    """Every ``pending`` row in the file (of any apply but ``besides``), oldest first.

    ``known``: the outcomes this flowsync knows; a row with any other (a newer flowsync's,
    same schema) is returned too, with its ``outcome``: whether its call changed the run
    cannot be told here, so the caller leaves it, and its run, alone."""
    rows = store.execute(
        """
        SELECT apply_id, CAST(flow_run_id AS VARCHAR), action,
               json_extract_string(requested_state, '$.state.type'), state_type_before,
               json_extract_string(run_row, '$.state_id'), sent_at, rule, outcome
        FROM policy_actions
        WHERE (outcome = 'pending' OR (? AND NOT list_contains(CAST(? AS VARCHAR[]), outcome)))
          AND apply_id IS DISTINCT FROM ?
        ORDER BY sent_at, id
        """,
        [known is not None, sorted(known or ()), besides],
    ).rows()
    return [PendingRow(*row) for row in rows]


def settle_earlier(
    store: Store, outcomes: Mapping[tuple[str, str], tuple[str, Any]], resolved_by: str
) -> None:
    """Settle pending rows of earlier applies: (apply id, run) -> (outcome, details).

    The row keeps the apply that sent the run; ``details.resolved_by`` names the
    apply that read it back."""
    for apply_id in sorted({a for a, _ in outcomes}):
        record_outcomes(
            store,
            apply_id,
            {
                run: (outcome, {**(details or {}), "resolved_by": resolved_by})
                for (a, run), (outcome, details) in outcomes.items()
                if a == apply_id
            },
        )
