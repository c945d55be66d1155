"""One open DuckDB connection, and the one way to run SQL on it.

Owns ``Session``, the base of every ``Store`` role (``store/connect.py`` opens it):
its transactions (``transaction``, ``atomic``, ``discarded``), ``execute`` (rule,
audit, report, sync and export SQL alike), which turns DuckDB's exceptions into
typed store errors (``QueryError``, ``ReadOnlyError``, ``SandboxError``,
``QueryTimeoutError``, ``StoreError`` for running out of memory) carrying the
statement and DuckDB's detail and hint (``store/sqlerrors.py`` tells which; the
disk's refusals and damaged files, in queries and at ``COMMIT``, ``store/files.py``),
a statement's time limit, and ``Result``, the rows of the statement just run. ``frame``/
``typed_frame`` read any DuckDB type into Polars (the ones Polars cannot hold as
DuckDB's text). The connection itself stays private (``_con``); only ``store/``
modules reach it, and a test keeps it so. Must not: open, lock or migrate a file
(that is ``store/connect.py``), know a role's guarantees (``store/roles.py``), or
know about the API.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
from duckdb.sqltypes import DuckDBPyType

from flowsync.errors import (
    QueryError,
    StoreError,
)
from flowsync.store.sqlerrors import out_of_memory, query_error

if TYPE_CHECKING:
    import polars as pl

__all__ = ["Params", "Result", "Session"]

Params = list[Any] | dict[str, Any] | None


# DuckDB types Polars cannot hold, or holds wrongly (UHUGEINT wraps, TIME WITH TIME ZONE
# loses its offset, INTERVAL and UNION do not import at all): read as DuckDB's own text,
# which is what the duckdb CLI prints for them.
_AS_TEXT = {"interval", "union", "bit", "time with time zone", "uhugeint", "bignum", "varint"}


def _portable(t: DuckDBPyType) -> str | None:
    """The type to cast a column of DuckDB type ``t`` to before Polars reads it, or None
    when Polars reads it as it is. Nested types keep their shape; only the leaves change."""
    kind = t.id
    if kind in _AS_TEXT:
        return "VARCHAR"
    if kind == "variant":  # reaches Polars as its binary encoding: read as the JSON it holds
        return "JSON"
    if kind == "timestamp_s":  # its infinity reaches Polars as 1969-12-31 23:59:59
        return "TIMESTAMP"
    if kind not in ("list", "array", "struct", "map"):
        return None
    children = [
        (name, child) for name, child in t.children if isinstance(child, DuckDBPyType)
    ]  # an ARRAY's size is a child too
    changed = [_portable(child) for _, child in children]
    if all(c is None for c in changed):
        return None
    inner = [c if c is not None else str(child) for c, (_, child) in zip(changed, children)]
    if kind == "list":
        return f"{inner[0]}[]"
    if kind == "array":
        return f"{inner[0]}[{dict(t.children)['size']}]"
    if kind == "map":
        return f"MAP({inner[0]}, {inner[1]})"
    return "STRUCT(" + ", ".join(f"{_quote(n)} {c}" for (n, _), c in zip(children, inner)) + ")"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


T = TypeVar("T", bound="Session")


# What DuckDB raises (a RuntimeError) when Ctrl-C reaches it during a statement.
CTRL_C = "Query interrupted"


class Session:
    """One open DuckDB connection (a ``Store`` in one of its roles): run SQL on it through
    ``execute`` (rows), ``frame`` (Polars) or a transaction; its errors are typed."""

    read_only = False  # DuckDB refuses every write on the connection (ReadOnlyError)
    _sandbox = False  # no files, network or extensions; settings locked (SandboxError)

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        # Private: SQL goes through `execute` so its errors are typed (see tests/test_layering.py).
        self._con = con
        self.path = path
        self.memory_budget: int | None = None
        self._in_transaction = False

    def close(self) -> None:
        self._con.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- memory -------------------------------------------------------------

    @contextmanager
    def memory_guard(self) -> Iterator[None]:
        """Turn DuckDB running out of memory anywhere inside (reads too) into one StoreError,
        and a Ctrl-C that DuckDB caught mid-statement back into KeyboardInterrupt."""
        try:
            yield
        except duckdb.OutOfMemoryException as e:
            raise out_of_memory(self.path, self.memory_budget) from e
        except duckdb.Error as e:
            # The same, met where DuckDB names it otherwise: a commit or a checkpoint that
            # cannot hold a block under the cap ("failed to pin block of size ...").
            if "failed to pin block" in str(e):
                raise out_of_memory(self.path, self.memory_budget) from e
            raise
        except RuntimeError as e:
            # DuckDB answers Ctrl-C (SIGINT) during a statement with this, not with
            # KeyboardInterrupt: the command must stop as interrupted, not with an error.
            if str(e) == CTRL_C:
                raise KeyboardInterrupt from e
            raise

    # -- transactions and queries -------------------------------------------

    @property
    def in_transaction(self) -> bool:
        """A transaction of this connection is open (``transaction``, ``discarded``)."""
        return self._in_transaction

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT; the disk failing at COMMIT (full, WAL unwritable) is a typed error."""
        with self._errors("BEGIN TRANSACTION"):
            self._con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            with self.memory_guard():
                yield
        except BaseException:
            # A failed COMMIT or a fatal error may already have ended the transaction:
            # the error that got us here is the one to report.
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            raise
        else:
            try:
                with self._errors("COMMIT"):
                    self._con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self._con.execute("ROLLBACK")
                raise
        finally:
            self._in_transaction = False

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """The caller's open transaction, or a new one: the statements inside commit together."""
        if self._in_transaction:
            yield
            return
        with self.transaction():
            yield

    @contextmanager
    def discarded(self) -> Iterator[None]:
        """A transaction that is always rolled back: the statements inside change no table.

        (DuckDB does not roll back sequences: what runs here must not call ``setval`` or
        ``nextval``; policy rule SQL is held to an allow list of functions for that.)"""
        if self._in_transaction:
            raise StoreError("discarded() cannot run inside another transaction")
        self._con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            with self.memory_guard():
                yield
        finally:
            self._in_transaction = False
            self._con.execute("ROLLBACK")

    @contextmanager
    def _time_limit(self, seconds: float | None) -> Iterator[list[bool]]:
        """Interrupt the statement when it runs past ``seconds`` (None: no limit; nor beyond
        the longest wait a timer can have, ``threading.TIMEOUT_MAX``, e.g. ``inf``)."""
        fired = [False]
        if seconds is not None and not seconds > 0:
            raise ValueError(f"a time limit is a positive number of seconds, not {seconds!r}")
        if not seconds or seconds >= threading.TIMEOUT_MAX:
            yield fired
            return

        def stop() -> None:
            fired[0] = True
            self._con.interrupt()

        timer = threading.Timer(seconds, stop)
        timer.daemon = True
        timer.start()
        try:
            yield fired
        finally:
            timer.cancel()

    @contextmanager
    def _errors(self, sql: str, timeout: float | None = None) -> Iterator[None]:
        """DuckDB's exceptions as typed store errors (``store/sqlerrors.py`` reads them)."""
        try:
            with self.memory_guard(), self._time_limit(timeout) as fired:
                yield
        except duckdb.Error as e:
            if isinstance(e, duckdb.InterruptException) and not fired[0]:
                raise KeyboardInterrupt from e  # Ctrl-C, not our time limit
            raise query_error(
                e,
                sql,
                path=self.path,
                read_only=self.read_only,
                sandbox=self._sandbox,
                timeout=timeout,
                timed_out=fired[0],
            ) from e

    def execute(self, sql: str, params: Params = None, *, timeout: float | None = None) -> Result:
        """Run SQL (one or more statements; the last one's rows are the result).

        Values go in ``params`` (``?`` list or ``$name`` dict), never into ``sql``.
        DuckDB's errors come out as ``QueryError`` / ``ReadOnlyError`` / ``StoreError``.
        ``timeout`` (seconds) stops a statement that runs longer: ``QueryTimeoutError``.
        With a timeout the rows are read inside the limit too (``Result`` holds them).
        """
        if timeout:
            with self._errors(sql, timeout):
                self._con.execute(sql, params)
                rows = self._con.fetchall()
                columns = [d[0] for d in self._con.description or []]
            return Result(self, sql, (columns, rows))
        with self._errors(sql):
            self._con.execute(sql, params)
        return Result(self, sql)

    def frame(self, sql: str, params: Params = None) -> pl.DataFrame:
        """``execute`` for analysis: the last statement's rows as a Polars frame, same errors.

        Every DuckDB type arrives as something Polars holds without loss (see ``_portable``)."""
        return self.typed_frame(sql, params)[0]

    def typed_frame(self, sql: str, params: Params = None) -> tuple[pl.DataFrame, list[str]]:
        """``frame``, with the DuckDB type of each column as DuckDB names it (``JSON``,
        ``INTERVAL``, ``STRUCT(a INTEGER)``): what the value was before it became Polars."""
        import polars as pl

        with self._errors(sql):
            rel = self._con.sql(sql, params=params)
            if rel is None:  # the last statement returns nothing (SET, CALL ...)
                return pl.DataFrame(), []
            types = [str(t) for t in rel.types]
            casts = [_portable(t) for t in rel.types]
            if any(c is not None for c in casts):
                # by position: a result may repeat a column name
                rel = rel.project(
                    ", ".join(
                        (f"#{i}" if cast is None else f"CAST(#{i} AS {cast})")
                        + f" AS {_quote(name)}"
                        for i, (name, cast) in enumerate(zip(rel.columns, casts), start=1)
                    )
                )
            frame: pl.DataFrame = rel.pl()
            return frame, types

    @contextmanager
    def registered(self, name: str, data: Any) -> Iterator[None]:
        """``data`` (an Arrow table or Polars frame) visible to SQL as ``name`` inside the block."""
        with self._errors(f"register {name}"):
            self._con.register(name, data)
        try:
            yield
        except BaseException:
            # The error that stopped the block is the one to tell (out of memory, say): an
            # aborted transaction refuses the unregister too, until it is rolled back.
            with contextlib.suppress(duckdb.Error):
                self._con.unregister(name)
            raise
        self._con.unregister(name)

    def statements(self, sql: str) -> list[tuple[str, str]]:
        """Parse ``sql`` without running it: (statement type, text) per statement."""
        with self._errors(sql):
            return [(s.type.name, s.query) for s in self._con.extract_statements(sql)]

    def parse_tree(self, sql: str) -> dict[str, Any]:
        """DuckDB's own parse tree of one statement (``json_serialize_sql``), as JSON."""
        tree = self.execute("SELECT json_serialize_sql(CAST(? AS VARCHAR))", [sql]).scalar()
        parsed: dict[str, Any] = json.loads(tree)
        if parsed.get("error"):
            raise QueryError(
                str(parsed.get("error_message") or "cannot parse"), sql=sql, kind="ParserException"
            )
        return parsed

    def functions_called(self, sql: str) -> set[str]:
        """Names of every function (scalar and table) one statement calls, from DuckDB's own parse tree."""
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

        walk(self.parse_tree(sql))
        return found


class Result:
    """The rows of the statement a ``Store.execute`` just ran; read them once, before the next one."""

    def __init__(
        self,
        store: Session,
        sql: str,
        fetched: tuple[list[str], list[tuple[Any, ...]]] | None = None,
    ) -> None:
        self._store, self._sql, self._fetched = store, sql, fetched

    @property
    def columns(self) -> list[str]:
        if self._fetched is not None:
            return self._fetched[0]
        return [d[0] for d in self._store._con.description or []]

    def rows(self) -> list[tuple[Any, ...]]:
        if self._fetched is not None:
            return self._fetched[1]
        with self._store._errors(self._sql):
            return self._store._con.fetchall()

    def one(self) -> tuple[Any, ...] | None:
        """The first row, reading all of them (DuckDB 2 refuses new work on an unread result)."""
        rows = self.rows()
        return rows[0] if rows else None

    def scalar(self) -> Any:
        row = self.one()
        return row[0] if row else None

    def dicts(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Column names and the rows as dicts."""
        columns = self.columns
        return columns, [dict(zip(columns, row)) for row in self.rows()]
