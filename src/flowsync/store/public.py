"""The DuckDB file as other tools see it: a connection for notebooks, Parquet copies.

Owns: handing users (Jupyter, scripts) a duckdb connection with the same path
rules and lock handling as the CLI, and the SQL that copies a table, or one
day of it, to a Parquet file for ``flowsync.export``. ``connect`` is read-only
by default, so a notebook never changes the data by accident. Must not: decide
file layout or names (that is ``flowsync.export``), or know about the API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path

import duckdb

from flowsync.config import resolve_db_path
from flowsync.errors import StoreError
from flowsync.store.connect import Store

# Column types that Parquet readers (Spark, Trino, Polars, pandas) disagree on are
# written as text: UUID has no portable logical type, JSON is a string anyway.
_AS_TEXT = {"UUID", "JSON"}


def connect(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]] | None = None,
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
    from flowsync.store.snapshot import open_for_reading

    if path is not None and not isinstance(path, (str, os.PathLike)):
        from flowsync.store.multi import open_sources

        if not read_only:
            raise StoreError("Several files open read-only only; open one file to write to it.")
        return open_sources(path, live=live).con
    db = resolve_db_path(path)
    if not read_only:
        return Store.open(db, read_only=False, wait=wait).con
    return open_for_reading(db, live=live, wait=wait).con


def _columns(store: Store, table: str) -> list[tuple[str, str]]:
    rows = store.con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
        [table],
    ).fetchall()
    if not rows:
        raise StoreError(f"{store.path} has no table {table!r}; run `flowsync pull` to create it.")
    return [(str(n), str(t)) for n, t in rows]


def _select_list(store: Store, table: str) -> str:
    cols = []
    for name, kind in _columns(store, table):
        quoted = '"' + name.replace('"', '""') + '"'
        cols.append(f"CAST({quoted} AS VARCHAR) AS {quoted}" if kind in _AS_TEXT else quoted)
    return ", ".join(cols)


def _day_expr(day_columns: Sequence[str]) -> str:
    # Table and column names come from flowsync's own list, never from user input.
    cols = ", ".join(f'"{c}"' for c in (*day_columns, "synced_at"))
    return f"CAST(coalesce({cols}) AS DATE)"


def day_counts(
    store: Store, table: str, day_columns: Sequence[str], changed_since: datetime | None = None
) -> dict[date, int]:
    """Rows per UTC day of the first non-null of ``day_columns``.

    With ``changed_since``, only the days that hold, or may have held, a row
    synced or marked deleted since then: a row whose first column was null when
    it was last exported sat in the day of a later column, so every fallback
    day of a changed row counts (counts are still of the whole day).
    """
    day = _day_expr(day_columns)
    where = ""
    params: list[object] = []
    if changed_since is not None:
        fallbacks = " UNION ".join(
            f"SELECT {_day_expr(day_columns[i:])} FROM {table} WHERE synced_at >= ? OR deleted_at >= ?"
            for i in range(len(day_columns))
        )
        where = f" WHERE {day} IN ({fallbacks})"
        params = [changed_since] * (2 * len(day_columns))
    sql = f"SELECT {day} AS day, count(*) FROM {table}{where} GROUP BY 1"
    return {d: int(n) for d, n in store.con.execute(sql, params).fetchall()}


def row_count(store: Store, table: str) -> int:
    return int(store.scalar(f"SELECT count(*) FROM {table}"))


def changed_rows(store: Store, table: str, since: datetime) -> int:
    """How many rows of ``table`` were synced or marked deleted since ``since``."""
    return int(
        store.scalar(f"SELECT count(*) FROM {table} WHERE synced_at >= ? OR deleted_at >= ?", [since, since])
    )


def write_parquet(
    store: Store, table: str, dest: Path, *, day_columns: Sequence[str] = (), day: date | None = None
) -> None:
    """Copy ``table`` (or the rows of one UTC day, as ``day_counts`` counts) to the Parquet file ``dest``.

    Rows are ordered by ``id`` so the same data always makes the same file.
    """
    sql = f"SELECT {_select_list(store, table)} FROM {table}"
    params: list[object] = []
    if day_columns and day is not None:
        sql += f" WHERE {_day_expr(day_columns)} = CAST(? AS DATE)"
        params.append(day)
    sql += " ORDER BY id"
    try:
        store.con.sql(sql, params=params).write_parquet(str(dest), compression="zstd")
    except (duckdb.Error, OSError) as e:
        raise StoreError(f"Cannot write {dest}: {str(e).splitlines()[0]}") from e
