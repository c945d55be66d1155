"""The ``policy_actions`` audit table: what ``flowsync apply`` sent, and what the server said.

Owns: writing one row per run per batch before the API call (outcome
``pending``, with the run's last known row as JSON) and recording the answer
after it, one statement per batch. A crash between the two leaves ``pending``
rows: sent, answer unknown. Policy code runs its other SQL (rule SQL, plan
reads) through ``Store.execute``. Must not: decide what to apply or call the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from flowsync.store.connect import Store


def record_batch(
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
    state_type: str,
    ids: Sequence[str],
) -> None:
    """Record a batch as ``pending`` before it is sent, with each run's row as JSON."""
    with store.transaction():
        store.execute(
            """
            INSERT INTO policy_actions (apply_id, batch, sent_at, api_url, policy_path, policy_sha256,
                rule, action, requested_state, flow_run_id, state_type_before, outcome, run_row)
            SELECT ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS JSON), b.id, ?, 'pending',
                   CASE WHEN r.id IS NOT NULL THEN to_json(r) END
            FROM (SELECT unnest(CAST(? AS UUID[])) AS id) b LEFT JOIN flow_runs r ON r.id = b.id
            """,
            [
                apply_id, batch, datetime.now(timezone.utc), api_url, policy_path, policy_sha256,
                rule, action, json.dumps(requested_state) if requested_state is not None else None,
                state_type, [str(i) for i in ids],
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
            [datetime.now(timezone.utc), list(outcomes), [o for o, _ in outcomes.values()], details, apply_id],
        )


def outcome_counts(store: Store, apply_id: str) -> dict[tuple[str, str], int]:
    """(rule, outcome) -> runs, for one apply."""
    rows = store.execute(
        "SELECT rule, outcome, count(*) FROM policy_actions WHERE apply_id = ? GROUP BY ALL",
        [apply_id],
    ).rows()
    return {(str(r), str(o)): int(n) for r, o, n in rows}
