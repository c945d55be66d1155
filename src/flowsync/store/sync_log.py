"""The pull's bookkeeping: ``sync_state`` cursors and the ``sync_runs`` log.

Owns: reading and writing the JSON values a pull resumes from (``sync_state``),
one ``sync_runs`` row per pull (or per apply or ``plan --refresh``: ``mode = 'apply'`` or
``'plan-refresh'``), and the summary ``flowsync status`` shows. Must not: call the API or write the
synced tables (that is ``synced_tables``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flowsync import __version__
from flowsync.errors import StoreError
from flowsync.store.connect import Store, version_key
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


def _timestamp(value: Any) -> str | None:
    if not isinstance(value, str):
        return "not a time"
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "not a time"
    return None


def _full_pass(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not an object"
    segments, pass_id = value.get("segments"), value.get("pass_id")
    if (
        not (isinstance(pass_id, int) or (isinstance(pass_id, str) and pass_id.isdigit()))
        or _timestamp(value.get("started"))
        or not isinstance(segments, list)
        or not all(
            isinstance(s, dict) and {"lo", "hi", "pos", "done"} <= s.keys() for s in segments
        )
    ):
        return "not a full pass's pass_id, started and segments"
    return None


def _of(kind: type, label: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        return None if ok else f"not {label}"

    return check


# The ``sync_state`` values this flowsync reads back, each with what it must be (null: none
# recorded). A value is not a migration: a newer flowsync may keep one in another shape with
# no migration this one would refuse, and reading it as this one's failed deep inside a pull
# or after an apply's calls (a traceback), or would write this one's over it. A writer
# refuses such a file before it reads or writes anything (``check_shapes``). Values read
# around another shape (``server``, ``flow_runs.rescheduled_looked``, ``run_retention``,
# read by SQL) are not listed.
STATE_SHAPES: dict[str, Callable[[Any], str | None]] = {
    **{
        key: _timestamp
        for key in (
            "flows.cursor",
            "flows.listed_at",
            "deployments.cursor",
            "deployments.listed_at",
            "flow_runs.cursor",
            "flow_runs.events_cursor",
            "flow_runs.newest_event",
            "flow_runs.verified_at",
            "flow_runs.rescheduled_cursor",
            "error_signatures_seen_through",
            "opened_for_writing_at",
        )
    },
    "flow_runs.full_pass": _full_pass,
    "views_built": _of(dict, "an object"),
    "snapshot_generation": _of(int, "a whole number"),
    "api_url": _of(str, "a URL"),
    "api_url_moves": _of(list, "a list"),
}


def check_shapes(store: Store) -> None:
    """Refuse (``StoreError``) a file whose ``sync_state`` holds a value this flowsync reads
    in a shape it does not know (``STATE_SHAPES``): a newer flowsync's, or an edit. For a
    writer, before it reads or writes anything; nothing is written here."""
    rows = store._own_rows(
        "SELECT key, CAST(value AS VARCHAR) FROM sync_state WHERE key IN "
        f"({', '.join(repr(k) for k in STATE_SHAPES)}) ORDER BY key"
    )
    for key, text in rows:
        value = json.loads(text) if text is not None else None
        problem = None if value is None else STATE_SHAPES[key](value)
        if problem is None:
            continue
        written_by = store.file_versions().get("written_by", "")
        if written_by and version_key(written_by) > version_key(__version__):
            who = f"flowsync {written_by}, which wrote the file"
        else:
            who = "a newer flowsync, or an edit"
        raise StoreError(
            f"{store.path} holds sync_state {key!r} in a shape this flowsync {__version__} "
            f"does not read ({problem}; kept so by {who}): this version will not write to "
            "it. Upgrade flowsync (pip install -U flowsync) where this command runs, or use "
            "another --db."
        )


def read_state(store: Store, key: str) -> Any:
    """What a reader takes of ``key`` (one of ``STATE_SHAPES``): its value, or None when it
    is kept in a shape this flowsync does not read (a newer flowsync's, or an edit). A
    reader shows what else the file says; a writer refuses such a file (``check_shapes``)."""
    value = get_state(store, key)
    return None if value is None or STATE_SHAPES[key](value) is not None else value


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


# What a record left 'running' by a process that ended (kill -9, the OOM killer) becomes:
# a pull's, an apply's or a refresh's.
STALE_ERROR = "its process ended before it finished (killed, or out of memory)"


def abandon_stale_runs(store: Store) -> None:
    """Pulls left 'running' by a crash (the file lock proves none is running now)."""
    store.execute(
        "UPDATE sync_runs SET status = 'interrupted', error = coalesce(error, ?) "
        "WHERE status = 'running'",
        [STALE_ERROR],
    )


def status_summary(store: Store, *, none_running: bool = False) -> dict[str, Any]:
    """What is in the file: counts and the last pulls. ``none_running``: no writer holds the
    file (the live file opened), so a record still 'running' is shown as the next writer
    records it (``abandon_stale_runs``)."""
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
    for record in (out["last_pull"], out["last_apply"]):
        if none_running and record is not None and record["status"] == "running":
            record.update(status="interrupted", error=record["error"] or STALE_ERROR)
    out["pulls"] = int(store.execute("SELECT count(*) FROM sync_runs").scalar())
    out["api_url"] = read_state(store, "api_url")
    out["server"] = server_record(store)
    return out


def last_pull_at(store: Store) -> datetime | None:
    """When the last successful pull (full or incremental) started; on a published snapshot
    a later pull found nothing changed from, that pull's start (``Store.confirmed_at``)."""
    value: datetime | None = store.execute(
        "SELECT max(started_at) FROM sync_runs WHERE status = 'ok' AND mode IN ('full', 'incremental')"
    ).scalar()
    confirmed = store.confirmed_at
    return confirmed if confirmed is not None and (value is None or confirmed > value) else value
