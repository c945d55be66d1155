"""When each error signature was first seen: recorded at pull time, read by ``report errors``.

Owns: the ``error_signatures_seen`` table (one row per normalised error text: the
``run_at`` and id of its earliest failed run over all the history the file has
seen, deleted runs included) and keeping it current. Each pull, after the views
are rebuilt, normalises the messages of the failed runs it wrote (``synced_at``
after the last recorded watermark, kept in ``sync_state``), each distinct message
once, and lowers ``first_seen`` where an older failure turns up; the first pull
after the upgrade reads every failed run once. So the ``error_signatures`` macro
(``sql/16_error_signatures.sql``) gets first seen over all history with a join,
not by normalising every old message per report. Must not: call the API.
"""

from __future__ import annotations

from flowsync.store.connect import Store
from flowsync.store.sync_log import get_state, set_state
from flowsync.store.synced_tables import now_utc

WATERMARK = "error_signatures_seen_through"  # the latest flow_runs.synced_at recorded


def record_first_seen(store: Store) -> int:
    """Record the failed runs written since the last call; returns the signatures touched."""
    through = get_state(store, WATERMARK)
    newest = store.execute("SELECT max(synced_at) FROM flow_runs").scalar()
    with store.atomic():
        touched = store.execute(
            """
            INSERT INTO error_signatures_seen
            WITH failed AS (
                SELECT id, run_at, state_message FROM flow_run_measures
                WHERE is_failure AND id IN (
                    SELECT id FROM flow_runs
                    WHERE $through IS NULL OR synced_at > CAST($through AS TIMESTAMPTZ)
                )
            ), texts AS (
                SELECT state_message, error_signature_text(state_message) AS error_text
                FROM (SELECT DISTINCT state_message FROM failed)
            )
            SELECT t.error_text, min(f.run_at), arg_min(f.id, f.run_at), $now
            FROM failed AS f JOIN texts AS t ON t.state_message IS NOT DISTINCT FROM f.state_message
            GROUP BY t.error_text
            ON CONFLICT (error_text) DO UPDATE SET
                first_run_id = CASE WHEN excluded.first_seen < error_signatures_seen.first_seen
                    THEN excluded.first_run_id ELSE error_signatures_seen.first_run_id END,
                first_seen = least(error_signatures_seen.first_seen, excluded.first_seen),
                recorded_at = excluded.recorded_at
            RETURNING error_text
            """,
            {"through": through, "now": now_utc()},
        ).rows()
        if newest is not None:
            set_state(store, WATERMARK, newest.isoformat())
    return len(touched)
