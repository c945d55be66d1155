"""The ``policy_actions`` audit table: what ``flowsync apply`` sent, and what the server said.

Owns: writing one row per run per batch before the API call (outcome
``pending``, with the run's last known row as JSON) and recording the answer
after it, one statement per batch. A crash between the two leaves ``pending``
rows: sent, answer unknown. Also the few reads policy code needs
(``statements``, ``select_rows``), which wrap DuckDB errors into ``StoreError``.
Must not: decide what to apply or call the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import duckdb

from flowsync.errors import StoreError
from flowsync.store.connect import Store


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def statements(store: Store, sql: str) -> list[tuple[str, str]]:
    """Parse ``sql`` without running it: (statement type, text) per statement."""
    try:
        return [(s.type.name, s.query) for s in store.con.extract_statements(sql)]
    except duckdb.Error as e:
        raise StoreError(_first_line(e)) from e


def select_rows(store: Store, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Run one query; its column names and rows as dicts."""
    try:
        cursor = store.con.execute(sql, params)
        columns = [d[0] for d in cursor.description or []]
        return columns, [dict(zip(columns, row)) for row in cursor.fetchall()]
    except duckdb.Error as e:
        raise StoreError(_first_line(e)) from e


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
        store.con.execute(
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
        store.con.execute(
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
    rows = store.con.execute(
        "SELECT rule, outcome, count(*) FROM policy_actions WHERE apply_id = ? GROUP BY ALL",
        [apply_id],
    ).fetchall()
    return {(str(r), str(o)): int(n) for r, o, n in rows}
