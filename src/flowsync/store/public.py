"""``flowsync.connect()``: the DuckDB file as a plain duckdb connection, for notebooks.

Owns: handing users (Jupyter, scripts, other tools) a connection to the file
with the same path rules and lock handling as the CLI. Read-only by default,
so a notebook left open never blocks a scheduled ``flowsync pull`` for longer
than it holds the connection, and never changes the data by accident. Must
not: write to the file unless asked (``read_only=False``), or know about the API.
"""

from __future__ import annotations

import os

import duckdb

from flowsync.config import resolve_db_path
from flowsync.store.connect import Store


def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = True,
    wait: float = 0.0,
) -> duckdb.DuckDBPyConnection:
    """Open the flowsync DuckDB file and return the duckdb connection.

    ``path`` defaults like ``--db``: ``$FLOWSYNC_DB``, else ``./flowsync.duckdb``.
    The session time zone is UTC, as in every flowsync command. A read-only
    connection fails with ``StoreLockedError`` while a pull is writing (pass
    ``wait`` seconds to wait for it); close it (``con.close()``) when done so
    the next scheduled pull can take the file.

    Example::

        import flowsync
        con = flowsync.connect("runs.duckdb")
        con.sql("SELECT state_type, count(*) FROM flow_runs GROUP BY 1").pl()
    """
    store = Store.open(resolve_db_path(path), read_only=read_only, wait=wait)
    return store.con
