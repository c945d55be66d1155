"""The pull's bookkeeping: ``sync_state`` cursors and the ``sync_runs`` log.

Owns: reading and writing the JSON values a pull resumes from (``sync_state``),
one ``sync_runs`` row per pull (or per apply or ``plan --refresh``: ``mode = 'apply'`` or
``'plan-refresh'``), and the summary ``flowsync status`` shows. Must not: call the API or write the
synced tables (that is ``synced_tables``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flowsync.store.connect import Store
from flowsync.store.synced_tables import now_utc, oldest_read


def get_state(store: Store, key: str) -> Any:
    row = store.execute("SELECT value FROM sync_state WHERE key = ?", [key]).one()
    return json.loads(row[0]) if row else None


def set_state(store: Store, key: str, value: Any) -> None:
    store.execute(
        """
        INSERT INTO sync_state VALUES (?, CAST(? AS JSON), ?)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
        """,
        [key, json.dumps(value), now_utc()],
    )


# {"version", "cloud", "bulk", "seen_at"}: the server as last pulled (``sync.identity`` writes it)
SERVER_KEY = "server"


def server_record(store: Store) -> dict[str, Any] | None:
    """The server as last pulled; None when no pull recorded it, or when a newer flowsync
    keeps it in another shape (status and plan read what else the file says)."""
    server = get_state(store, SERVER_KEY)
    return server if isinstance(server, dict) else None


def delete_state(store: Store, key: str) -> None:
    store.execute("DELETE FROM sync_state WHERE key = ?", [key])


def start_sync_run(store: Store, api_url: str, mode: str | None = None) -> int:
    """A new ``sync_runs`` record, running. ``mode``: known from the start (``apply``,
    ``plan-refresh``); a pull's (full or incremental) is written when it ends."""
    row = store.execute(
        "INSERT INTO sync_runs (started_at, status, api_url, mode) VALUES (?, 'running', ?, ?) "
        "RETURNING id",
        [now_utc(), api_url, mode],
    ).one()
    assert row is not None
    return int(row[0])


def finish_sync_run(store: Store, pull_id: int, **fields: Any) -> None:
    fields.setdefault("finished_at", now_utc())
    if "details" in fields and not isinstance(fields["details"], str):
        fields["details"] = json.dumps(fields["details"])
    sets = ", ".join(f"{k} = ?" for k in fields)
    store.execute(f"UPDATE sync_runs SET {sets} WHERE id = ?", [*fields.values(), pull_id])


# A pull that never reached the server (recorded so that `status` shows it): it wrote nothing.
UNREACHED = "status = 'failed' AND mode IS NULL"


def previous_run_id(store: Store, pull_id: int) -> int | None:
    """The ``sync_runs`` row started before this one (any flowsync, any outcome; not a pull
    that never reached the server)."""
    value = store.execute(
        f"SELECT max(id) FROM sync_runs WHERE id < ? AND NOT ({UNREACHED})", [pull_id]
    ).scalar()
    return None if value is None else int(value)


def abandon_stale_runs(store: Store) -> None:
    """Pulls left 'running' by a crash (the file lock proves none is running now)."""
    store.execute(
        "UPDATE sync_runs SET status = 'interrupted', error = coalesce(error, 'process ended before the pull finished') "
        "WHERE status = 'running'"
    )


def status_summary(store: Store) -> dict[str, Any]:
    """What is in the file: counts and the last pulls."""
    out: dict[str, Any] = {}
    for table in ("flows", "deployments", "flow_runs"):
        live, deleted = store.execute(
            f"SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) FROM {table}"
        ).one() or (0, 0)
        out[table] = {"live": int(live), "deleted": int(deleted)}
    states = store.execute(
        "SELECT coalesce(state_type, 'NONE'), count(*) FROM flow_runs WHERE deleted_at IS NULL GROUP BY 1 ORDER BY 2 DESC"
    ).rows()
    out["flow_runs"]["by_state"] = {s: int(n) for s, n in states}
    out["flow_runs"]["oldest_read_at"] = oldest_read(store)
    cols = [
        "id",
        "started_at",
        "finished_at",
        "status",
        "mode",
        "api_url",
        "inserted",
        "updated",
        "marked_deleted",
        "requests",
        "error",
    ]
    # A pull's record (its mode is written when it ends: a pull still running, killed or that
    # never reached the server has none); apply and `plan --refresh` write records too.
    last, other = (
        store.execute(
            f"SELECT {', '.join(cols)} FROM sync_runs WHERE {where} ORDER BY id DESC LIMIT 1"
        ).one()
        for where in (
            "mode IS NULL OR mode IN ('full', 'incremental')",
            "mode NOT IN ('full', 'incremental')",
        )
    )
    ok = store.execute(
        "SELECT max(finished_at) FROM sync_runs WHERE status = 'ok' AND mode IN ('full', 'incremental')"
    ).one()
    out["last_pull"] = dict(zip(cols, last)) if last else None
    out["last_successful_pull_at"] = ok[0] if ok else None
    out["last_apply"] = dict(zip(cols, other)) if other else None  # or plan --refresh
    out["pulls"] = int(store.execute("SELECT count(*) FROM sync_runs").scalar())
    out["api_url"] = get_state(store, "api_url")
    out["server"] = server_record(store)
    return out


def last_pull_at(store: Store) -> datetime | None:
    """When the last successful pull (full or incremental) started."""
    value: datetime | None = store.execute(
        "SELECT max(started_at) FROM sync_runs WHERE status = 'ok' AND mode IN ('full', 'incremental')"
    ).scalar()
    return value
