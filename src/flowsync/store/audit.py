"""The ``policy_actions`` audit table: what ``flowsync apply`` sent, and what the server said.

Owns: writing one row per run per apply: before the API call (outcome
``pending``, with the run's row as just re-read, as JSON) and recording the
answer after it, one statement per batch; or, for a run the re-check dropped,
its final outcome at once. A crash between the two leaves ``pending`` rows:
sent, answer unknown. Policy code runs its other SQL (rule SQL, plan reads)
through ``Store.execute``. Must not: decide what to apply or call the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from flowsync.store.connect import Store


def record_runs(
    store: Store,
    *,
    apply_id: str,
    batch: int,
    api_url: str,
    policy_path: str,
    policy_sha256: str,
    rule: str,
    action: str,
    requested_state: Mapping[str, Any] | None,
    runs: Sequence[tuple[str, str, str, Any]],
) -> None:
    """Insert one row per run, with the run's row in the file as JSON.

    ``runs`` holds (id, state type guarded or last known, outcome, details):
    outcome ``pending`` for a run about to be sent (its answer is recorded by
    ``record_outcomes``), or the final outcome of a run that will not be sent.
    """
    if not runs:
        return
    with store.transaction():
        store.execute(
            """
            INSERT INTO policy_actions (apply_id, batch, sent_at, api_url, policy_path, policy_sha256,
                rule, action, requested_state, flow_run_id, state_type_before, outcome, details, run_row)
            SELECT ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS JSON), b.id, b.state_type, b.outcome,
                   CAST(b.details AS JSON), CASE WHEN r.id IS NOT NULL THEN to_json(r) END
            FROM (SELECT unnest(CAST(? AS UUID[])) AS id, unnest(CAST(? AS VARCHAR[])) AS state_type,
                         unnest(CAST(? AS VARCHAR[])) AS outcome, unnest(CAST(? AS VARCHAR[])) AS details) b
            LEFT JOIN flow_runs r ON r.id = b.id
            """,
            [
                apply_id,
                batch,
                datetime.now(timezone.utc),
                api_url,
                policy_path,
                policy_sha256,
                rule,
                action,
                json.dumps(requested_state) if requested_state is not None else None,
                [str(r[0]) for r in runs],
                [r[1] for r in runs],
                [r[2] for r in runs],
                [json.dumps(r[3], default=str) if r[3] is not None else None for r in runs],
            ],
        )


def record_outcomes(store: Store, apply_id: str, outcomes: Mapping[str, tuple[str, Any]]) -> None:
    """Set each run's outcome and the server's details (any JSON value) for this apply."""
    if not outcomes:
        return
    details = [json.dumps(d, default=str) if d is not None else None for _, d in outcomes.values()]
    with store.transaction():
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
