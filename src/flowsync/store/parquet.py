"""Parquet copies of the tables: the SQL behind ``flowsync export``.

Owns: the SQL that counts a table's rows per UTC day and copies a table, or
one day of it, to a Parquet file. Must not: decide file layout or names (that
is ``flowsync.export``), or know about the API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path

import duckdb

from flowsync.errors import StoreError
from flowsync.store.connect import Store

# Column types that Parquet readers (Spark, Trino, Polars, pandas) disagree on are
# written as text: UUID has no portable logical type, JSON is a string anyway.
_AS_TEXT = {"UUID", "JSON"}


def _columns(store: Store, table: str) -> list[tuple[str, str]]:
    rows = store.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
        [table],
    ).rows()
    if not rows:
        raise StoreError(f"{store.path} has no table {table!r}; run `flowsync pull` to create it.")
    return [(str(n), str(t)) for n, t in rows]


def table_select(store: Store, table: str) -> str:
    """``SELECT`` every column of ``table``, the types Parquet readers disagree on as text:
    what ``write_parquet`` copies (built once a table, not once a partition)."""
    cols = []
    for name, kind in _columns(store, table):
        quoted = '"' + name.replace('"', '""') + '"'
        cols.append(f"CAST({quoted} AS VARCHAR) AS {quoted}" if kind in _AS_TEXT else quoted)
    return f"SELECT {', '.join(cols)} FROM {table}"


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
    return {d: int(n) for d, n in store.execute(sql, params).rows()}


def days_held(store: Store, table: str, day_columns: Sequence[str]) -> set[date]:
    """Every UTC day ``day_counts`` files a row of ``table`` under: the partitions an
    export of it holds, and no other."""
    return {
        d for (d,) in store.execute(f"SELECT DISTINCT {_day_expr(day_columns)} FROM {table}").rows()
    }


def row_count(store: Store, table: str) -> int:
    return int(store.execute(f"SELECT count(*) FROM {table}").scalar())


def changed_rows(store: Store, table: str, since: datetime) -> int:
    """How many rows of ``table`` were synced or marked deleted since ``since``."""
    return int(
        store.execute(
            f"SELECT count(*) FROM {table} WHERE synced_at >= ? OR deleted_at >= ?", [since, since]
        ).scalar()
    )


def write_parquet(store: Store, select: str, dest: Path) -> None:
    """Copy a table (its ``table_select``) to the Parquet file ``dest``, ordered by ``id`` so
    that the same data always makes the same file."""
    _write(store, f"{select} ORDER BY id", [], dest)


# The rows ``staged`` holds at a time, about (a day with more is staged alone): a batch of
# days costs one scan of the table, not one a day (a million runs over 694 days: one scan
# of 1M rows a day was 0.36 s, about 4 min in all; 25 s now, BENCHMARKS.md).
STAGE_ROWS = 50_000
_STAGED = "flowsync_export_days"
_DAY = "flowsync_export_day"


@contextlib.contextmanager
def staged(
    store: Store, select: str, day_columns: Sequence[str], days: Sequence[date]
) -> Iterator[Callable[[date, Path], None]]:
    """The rows of ``days`` (UTC days of the first non-null of ``day_columns``, as
    ``day_counts`` counts them) of a ``table_select``, read in one scan into a TEMP table
    sorted by day and id; yields ``write(day, dest)``, which copies one of those days to the
    Parquet file ``dest`` (ordered by ``id``, as ``write_parquet``), reading only that day's
    row groups. The TEMP table is dropped on the way out."""
    day = _day_expr(day_columns)
    try:
        store.execute(
            f"CREATE OR REPLACE TEMP TABLE {_STAGED} AS "
            f"SELECT *, {day} AS {_DAY} FROM ({select}) AS t "
            f"WHERE {day} IN (SELECT unnest(CAST(? AS DATE[]))) ORDER BY {_DAY}, id",
            [list(days)],
        )

        def write(one: date, dest: Path) -> None:
            sql = f"SELECT * EXCLUDE ({_DAY}) FROM {_STAGED} WHERE {_DAY} = ? ORDER BY id"
            _write(store, sql, [one], dest)

        yield write
    finally:
        with contextlib.suppress(StoreError):  # a failed statement may have ended it all
            store.execute(f"DROP TABLE IF EXISTS {_STAGED}")


def _write(store: Store, sql: str, params: list[object], dest: Path) -> None:
    try:
        with store.memory_guard():  # out of memory, and Ctrl-C or SIGTERM mid-write
            store._con.sql(sql, params=params).write_parquet(str(dest), compression="zstd")
    except (duckdb.Error, OSError) as e:
        raise StoreError(f"Cannot write {dest}: {str(e).splitlines()[0]}") from e
