"""``flowsync.connect()``: the DuckDB file as a notebook or script sees it.

Owns: handing users (Jupyter, scripts) a duckdb connection with the same path
rules, lock handling and time zone as the CLI. It is read-only by default, so
a notebook never changes the data by accident. This is the one deliberate
place where the store hands out its connection: a notebook's job is to run its
own SQL on it. Code inside flowsync never calls it (it uses ``Store``).
Must not: know about the API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import duckdb

from flowsync.config import resolve_db_path
from flowsync.errors import StoreError
from flowsync.store import snapshot, sync_log
from flowsync.store.connect import Store


def connect(
    path: str
    | os.PathLike[str]
    | Sequence[str | os.PathLike[str]]
    | Mapping[str, str | os.PathLike[str]]
    | None = None,
    *,
    read_only: bool = True,
    wait: float = 0.0,
    live: bool = False,
) -> duckdb.DuckDBPyConnection:
    """Open the latest published snapshot of the flowsync DuckDB file; return the duckdb connection.

    ``path`` defaults like ``--db``: ``$FLOWSYNC_DB``, else ``./flowsync.duckdb``.
    The session time zone is UTC, as in every flowsync command. The snapshot
    is what the last successful pull (or apply) published: the connection keeps
    that view for as long as it stays open, never blocks a pull, and a new
    connection sees the newest pull. ``live=True`` (or ``read_only=False``)
    opens the live file instead, which a running pull holds: that connection
    fails with ``StoreLockedError`` (pass ``wait`` seconds to wait) and blocks
    the next pull until closed. A file no flowsync pull has published yet is
    read live.

    Several files (a list of paths, ``"NAME=PATH"`` strings, or a dict of
    name to path: one file per Prefect server or workspace) open together:
    every table and view stacks the files with a ``source`` column first.

    Example::

        import flowsync
        con = flowsync.connect("runs.duckdb")
        con.sql("SELECT state_type, count(*) FROM flow_runs GROUP BY 1").pl()
        both = flowsync.connect({"prod": "prod.duckdb", "staging": "staging.duckdb"})
        both.sql("SELECT source, count(*) FROM flow_runs GROUP BY 1").pl()
    """
    # The documented exception: a notebook runs its own SQL on the connection.
    store: Store
    if path is not None and not isinstance(path, (str, os.PathLike)):
        if not read_only:
            raise StoreError("Several files open read-only only; open one file to write to it.")
        store = Store.reader(path, live=live)
    elif read_only:
        store = Store.reader(resolve_db_path(path), live=live, wait=wait)
    else:
        # A notebook that writes keeps DuckDB's own memory default, as any DuckDB session.
        store = Store.writer(resolve_db_path(path), wait=wait, memory_limit_mb=0)
        with store.transaction():  # what it writes is published by the next pull
            sync_log.set_state(
                store, snapshot.OPENED_FOR_WRITING, datetime.now(timezone.utc).isoformat()
            )
    store.detach()
    return store._con
