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
    return store._con  # the documented exception: a notebook runs its own SQL on it
