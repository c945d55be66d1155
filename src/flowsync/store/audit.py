"""The ``policy_actions`` audit table: what ``flowsync apply`` sent, and what the server said.

Owns: writing one row per run per apply: before the API call (outcome
``pending``, with the run's row as just re-read, as JSON) and recording the
answer after it, one statement per batch; or, for a run the re-check dropped,
its final outcome at once. A crash between the two leaves ``pending`` rows:
sent, answer unknown. Also the few reads policy code needs
(``statements``, ``select_rows``), which wrap DuckDB errors into ``StoreError``.
Must not: decide what to apply or call the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import duckdb

from flowsync.errors import SandboxError, StoreError
from flowsync.store.connect import Store


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def statements(store: Store, sql: str) -> list[tuple[str, str]]:
    """Parse ``sql`` without running it: (statement type, text) per statement."""
    try:
        return [(s.type.name, s.query) for s in store.con.extract_statements(sql)]
    except duckdb.Error as e:
        raise StoreError(_first_line(e)) from e


def functions_called(store: Store, sql: str) -> set[str]:
    """Names of every function (scalar and table) one statement calls, from DuckDB's own parse tree."""
    try:
        row = store.con.execute("SELECT json_serialize_sql(CAST(? AS VARCHAR))", [sql]).fetchall()
    except duckdb.Error as e:
        raise StoreError(_first_line(e)) from e
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("function_name")
            if isinstance(name, str):
                found.add(name.lower())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(row[0][0]))
    return found


def select_rows(store: Store, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Run one query; its column names and rows as dicts.

    On a sandboxed store, reaching for a file, the network, an extension or a
    setting raises ``SandboxError``."""
    try:
        cursor = store.con.execute(sql, params)
        columns = [d[0] for d in cursor.description or []]
        return columns, [dict(zip(columns, row)) for row in cursor.fetchall()]
    except duckdb.PermissionException as e:
        raise SandboxError(_first_line(e)) from e
    except duckdb.Error as e:
        if store.sandboxed and "configuration has been locked" in str(e):
            raise SandboxError(_first_line(e)) from e
        raise StoreError(_first_line(e)) from e


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
        store.con.execute(
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
                apply_id, batch, datetime.now(timezone.utc), api_url, policy_path, policy_sha256,
                rule, action, json.dumps(requested_state) if requested_state is not None else None,
                [str(r[0]) for r in runs], [r[1] for r in runs], [r[2] for r in runs],
                [json.dumps(r[3], default=str) if r[3] is not None else None for r in runs],
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
