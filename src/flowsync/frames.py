"""SQL over the file as Polars frames: the reports' statements and the user's own
(``flowsync sql``, notebooks), with DuckDB's type of each column, and the file's catalog.

Owns: turning a statement into a frame through the store, and the one message for a
write refused on a read-only file. Must not: choose a report's query (``reports.py``),
import DuckDB, or print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowsync.config import check_utf8
from flowsync.errors import ConfigError, ReadOnlyError, StoreError

if TYPE_CHECKING:  # imported lazily: the CLI loads this without Polars or DuckDB
    import polars as pl

    from flowsync.store import Store


def run_sql(
    store: Store, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> pl.DataFrame:
    """One statement through the store, as a Polars frame; a refused write says why."""
    try:
        return store.frame(sql, params)
    except ReadOnlyError as e:
        raise _refused(e) from e


def _refused(e: ReadOnlyError) -> StoreError:
    return StoreError(
        f"{e.path} is open read-only, so statements that change it are refused "
        f"({e.detail}). Use SELECT to read; "
        "the file is changed only by flowsync pull and policy apply."
    )


@dataclass(frozen=True)
class SqlResult:
    """The rows of an ad-hoc query and DuckDB's type of each column (``JSON``, ``INTERVAL``...),
    which the frame alone no longer tells (a JSON column is a Polars string)."""

    frame: pl.DataFrame
    types: tuple[str, ...]

    @property
    def json_columns(self) -> tuple[str, ...]:
        """Columns of JSON text: DuckDB's JSON, and VARIANT (read as the JSON it holds)."""
        return tuple(
            name for name, t in zip(self.frame.columns, self.types) if t in ("JSON", "VARIANT")
        )


def sql_result(store: Store, sql: str) -> SqlResult:
    """An ad-hoc query (``flowsync sql``): one or more statements, the last one's rows.

    Every DuckDB type comes back as a value Polars holds (intervals, unions and the like
    as DuckDB's own text; see ``Store.typed_frame``)."""
    if not sql.strip():
        raise ConfigError('No SQL given: pass a query such as "SELECT count(*) FROM flow_runs".')
    check_utf8(sql, "The SQL")
    # The files are open read-only, but a file ATTACHed here could be written: refused.
    attach = [kind for kind, _text in store.statements(sql) if kind in ("ATTACH", "DETACH")]
    if attach:
        raise ConfigError(
            f"{attach[0]} is refused: flowsync sql reads only the files given with --db (each "
            "read-only); to query another flowsync file too, add it as --db NAME=PATH."
        )
    try:
        frame, types = store.typed_frame(sql)
    except ReadOnlyError as e:
        raise _refused(e) from e
    return SqlResult(frame, tuple(types))


def sql_query(store: Store, sql: str) -> pl.DataFrame:
    """``sql_result``'s rows."""
    return sql_result(store, sql).frame


# What a file holds, for `flowsync sql --tables`: the catalog, not a figure.
_CATALOG = """
    WITH cols AS (
        SELECT database_name, schema_name, table_name,
            list(column_name || ' ' || data_type ORDER BY column_index) AS columns
        FROM duckdb_columns() WHERE NOT internal GROUP BY ALL
    )
    SELECT kind, name, columns FROM (
        SELECT 'table' AS kind, table_name AS name, cols.columns
        FROM duckdb_tables() JOIN cols USING (database_name, schema_name, table_name)
        WHERE NOT internal AND database_name = current_database() AND schema_name = 'main'
        UNION ALL
        SELECT 'view', v.view_name, cols.columns
        FROM duckdb_views() AS v JOIN cols ON cols.database_name = v.database_name
            AND cols.schema_name = v.schema_name AND cols.table_name = v.view_name
        WHERE NOT v.internal AND v.database_name = current_database() AND v.schema_name = 'main'
        UNION ALL
        SELECT CASE function_type WHEN 'table_macro' THEN 'table macro' ELSE 'macro' END,
            function_name, parameters
        FROM duckdb_functions()
        WHERE function_type IN ('macro', 'table_macro') AND NOT internal
            AND database_name = current_database() AND schema_name = 'main'
    )
    ORDER BY CASE kind WHEN 'table' THEN 1 WHEN 'view' THEN 2 WHEN 'table macro' THEN 3 ELSE 4 END,
        name
"""


def tables(store: Store) -> pl.DataFrame:
    """Every table, view and macro of the file: its kind, name, and its columns with their
    types (for a macro: its parameters), as ``flowsync sql --tables`` lists them."""
    return run_sql(store, _CATALOG)
