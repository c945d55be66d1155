"""Opening the DuckDB file: paths checked, locks reported, migrations applied.

Owns: the one ``duckdb`` connection of a command, its transactions, and the
one way to run SQL on it: ``Store.execute`` (rule, audit, report, sync and
export SQL alike), which turns DuckDB's exceptions into typed store errors
(``QueryError``, ``ReadOnlyError``, ``StoreError`` for running out of memory)
carrying the statement and DuckDB's detail. The connection itself stays
private (``_con``); only ``store/`` modules reach it, and a test keeps it so.
``flowsync.connect()`` (``store/notebook.py``) is the documented exception: a
notebook asks for a DuckDB connection to run its own SQL.

A writer holds DuckDB's own file lock for as long as the command runs; a
second writer (or a reader while a writer runs) gets ``StoreLockedError`` or
waits with ``wait``. A *sandboxed* store (``sandbox=True``, for policy rule SQL) has
files, network and extensions switched off and its configuration locked for the
life of the connection: DuckDB cannot switch external access back on, so a
command that runs rule SQL opens its store sandboxed from the start and does
nothing on it that needs the outside (no Parquet, no memory settings); its
refusals come out as ``SandboxError``. Must not: know about the API.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from flowsync.errors import QueryError, ReadOnlyError, SandboxError, StoreError
from flowsync.store import migrations

if TYPE_CHECKING:
    import polars as pl

DUCKDB_MAGIC_OFFSET = 8
DUCKDB_MAGIC = b"DUCK"

# A write job's DuckDB memory cap (see ``Store.budget_memory``). Flat in the size of
# the history: flow_runs has no index (migration m003), and a write batch needs 19-27 MB
# at 10k-1M runs (BENCHMARKS.md).
WRITE_MEMORY = 64 * 2**20


# Rule SQL comes from policy files (pull requests): it must see only the history.
SANDBOX_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,  # no files (read_text, read_csv, ATTACH, COPY), no network
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
}


def _check_path(path: Path, read_only: bool) -> None:
    if path.is_dir():
        raise StoreError(
            f"--db {path} is a directory; pass a file path such as {path / 'flowsync.duckdb'}."
        )
    if read_only and not path.exists():
        raise StoreError(f"{path} does not exist: run `flowsync pull --db {path}` first.")
    if not path.parent.exists():
        raise StoreError(
            f"Directory {path.parent} does not exist: create it or choose another --db."
        )
    if path.exists():
        # Refuse non-DuckDB files before DuckDB touches them, so nothing is ever written to them.
        try:
            with path.open("rb") as f:
                head = f.read(DUCKDB_MAGIC_OFFSET + 4)
        except OSError as e:
            raise StoreError(
                f"Cannot read {path}: {e.strerror}. Check its permissions or choose another --db."
            ) from e
        if path.stat().st_size > 0 and head[DUCKDB_MAGIC_OFFSET:] != DUCKDB_MAGIC:
            raise StoreError(f"{path} is not a DuckDB database; choose another --db path.")
        if path.stat().st_size == 0:
            raise StoreError(
                f"{path} is an empty file, not a DuckDB database; remove it or choose another --db."
            )


def session_settings(con: duckdb.DuckDBPyConnection) -> None:
    """What every connection sets first: UTC, and no progress bar (DuckDB draws it on
    stdout, into `--json` and csv output, when a query runs over 2 s, e.g. the m003
    migration of a million-run file)."""
    con.execute("SET TimeZone = 'UTC'")
    # In a Jupyter kernel DuckDB refuses the setting unless ipywidgets is installed; there
    # the bar is a widget, not our stdout.
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _is_lock_error(err: Exception) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


class Store:
    """A DuckDB file with flowsync's schema. Use ``Store.open`` as a context manager."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool, sandboxed: bool = False
    ) -> None:
        # Private: SQL goes through `execute` so its errors are typed (see tests/test_layering.py).
        self._con = con
        self.path = path
        self.read_only = read_only
        self.sandboxed = sandboxed
        self.memory_budget: int | None = None
        self._in_transaction = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        read_only: bool = False,
        wait: float = 0.0,
        migrate: bool = True,
        sandbox: bool = False,
        memory_cap: bool = False,
        memory_limit_mb: int | None = None,
    ) -> Store:
        """Open (and for writers create and upgrade) the file; wait up to ``wait`` s for a lock.

        ``sandbox``: files, network and extensions off, configuration locked (see the module).
        ``memory_cap``: cap DuckDB's memory for a write job (``budget_memory`` with
        ``memory_limit_mb``) while the configuration can still change."""
        path = Path(path)
        _check_path(path, read_only)
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            try:
                con = duckdb.connect(
                    str(path), read_only=read_only, config=dict(SANDBOX_CONFIG) if sandbox else {}
                )
                break
            except duckdb.Error as e:
                if _is_lock_error(e):
                    if time.monotonic() < deadline:
                        time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
                        delay = min(delay * 1.5, 2.0)
                        continue
                    from flowsync.store.locks import locked_error

                    raise locked_error(path, str(e), read_only=read_only) from e
                if "different configuration" in str(e):
                    raise StoreError(
                        f"{path} is already open in this process with other settings; close it first."
                    ) from e
                if "not a valid DuckDB database" in str(e):
                    raise StoreError(
                        f"{path} is not a DuckDB database; choose another --db path."
                    ) from e
                if "Permission denied" in str(e) or "Read-only file system" in str(e):
                    raise StoreError(
                        f"Cannot open {path} for writing (permission denied); choose a writable --db path."
                    ) from e
                raise StoreError(f"Cannot open {path}: {str(e).splitlines()[0]}") from e
        store = cls(con, path, read_only, sandboxed=sandbox)
        try:
            session_settings(con)
            if migrate:
                store.migrate()
            if memory_cap:
                store.budget_memory(fixed_mb=memory_limit_mb)
            if sandbox:
                # After the time zone: nothing (rule SQL included) may change settings from here on.
                con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        return store

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -----------------------------------------------------------

    def applied_migrations(self) -> set[str]:
        exists = self.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = '_flowsync_migrations'"
        ).one()
        if not exists or not exists[0]:
            return set()
        return {r[0] for r in self.execute("SELECT name FROM _flowsync_migrations").rows()}

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in a transaction with its record."""
        applied = self.applied_migrations()
        todo = migrations.pending(applied)
        if not todo:
            return []
        if self.read_only:
            raise StoreError(
                f"{self.path} has an older schema ({len(todo)} migrations pending); "
                "run `flowsync pull` once to upgrade it."
            )
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS _flowsync_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = []
        # A migration may rewrite a whole table (m003): under the write cap, not DuckDB's
        # default of 80% of RAM (a million-run file peaked at 1 GB uncapped).
        self._con.execute(f"SET memory_limit = '{WRITE_MEMORY // 2**20}MiB'")
        try:
            with self.memory_guard():
                for name, fn in todo:
                    with self.transaction():
                        fn(self._con)
                        self._con.execute(
                            "INSERT INTO _flowsync_migrations VALUES (?, ?)",
                            [name, datetime.now(timezone.utc)],
                        )
                    done.append(name)
        finally:
            self._con.execute("RESET memory_limit")
        return done

    # -- memory -------------------------------------------------------------

    def budget_memory(self, *, fixed_mb: int | None = None) -> int:
        """Cap DuckDB's memory for a write job; returns the cap in bytes (0: none set).

        Unbounded, DuckDB's buffer pool keeps every block a checkpoint touches
        (the partly filled row group is rewritten whole), so a pull's peak memory
        grew with the size of its history. Under a cap it evicts them instead.
        ``fixed_mb`` replaces the cap (0 = DuckDB's default, 80% of RAM).
        """
        if fixed_mb == 0:
            return 0
        want = fixed_mb * 2**20 if fixed_mb else WRITE_MEMORY
        try:
            self._con.execute(f"SET memory_limit = '{want // 2**20}MiB'")
        except duckdb.OutOfMemoryException as e:
            raise StoreError(
                f"A memory limit of {want // 2**20} MB is below what DuckDB already holds for {self.path}; "
                "pass a larger --memory-limit (at least 64), or 0 for DuckDB's default."
            ) from e
        self.memory_budget = want
        return want

    @contextmanager
    def single_threaded(self) -> Iterator[None]:
        """Run DuckDB on the calling thread only inside the block (a pull's writes).

        A pull writes a batch of ~2,000 rows at a time: too little for DuckDB's
        worker threads to pay off, and their hand-offs cost CPU that the
        pull's fetch threads (and, on a shared machine, the server) need:
        BENCHMARKS.md, "Client CPU per run". The previous setting is restored after.
        """
        threads = int(self.execute("SELECT current_setting('threads')").scalar())
        self._con.execute("SET threads = 1")
        try:
            yield
        finally:
            # Never hide the error that ended the block (an aborted transaction refuses SET).
            with contextlib.suppress(duckdb.Error):
                self._con.execute(f"SET threads = {threads}")

    def _out_of_memory(self) -> StoreError:
        if self.memory_budget:  # a cap this command set (`pull --memory-limit` changes it)
            hint = f" under its {self.memory_budget // 2**20} MB cap"
            fix = " Re-run with a larger --memory-limit (MB)."
        else:
            hint, fix = "", " Free some memory (or close other programs) and run it again."
        return StoreError(
            f"DuckDB ran out of memory{hint} on {self.path}; nothing from this step was saved.{fix}"
        )

    @contextmanager
    def memory_guard(self) -> Iterator[None]:
        """Turn DuckDB running out of memory anywhere inside (reads too) into one StoreError."""
        try:
            yield
        except duckdb.OutOfMemoryException as e:
            raise self._out_of_memory() from e

    # -- transactions and queries -------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            with self.memory_guard():
                yield
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        else:
            self._con.execute("COMMIT")
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
    def _errors(self, sql: str) -> Iterator[None]:
        """DuckDB's exceptions as typed store errors (the only place that reads their text)."""
        try:
            with self.memory_guard():
                yield
        except duckdb.Error as e:
            detail = _first_line(e)
            kind = type(e).__name__
            if self.read_only and "read-only mode" in str(e):
                raise ReadOnlyError(detail, sql=sql, kind=kind, path=str(self.path)) from e
            if isinstance(e, duckdb.PermissionException) or (
                self.sandboxed and "configuration has been locked" in str(e)
            ):
                raise SandboxError(detail, sql=sql, kind=kind) from e
            raise QueryError(detail, sql=sql, kind=kind) from e

    def execute(self, sql: str, params: Params = None) -> Result:
        """Run SQL (one or more statements; the last one's rows are the result).

        Values go in ``params`` (``?`` list or ``$name`` dict), never into ``sql``.
        DuckDB's errors come out as ``QueryError`` / ``ReadOnlyError`` / ``StoreError``.
        """
        with self._errors(sql):
            self._con.execute(sql, params)
        return Result(self, sql)

    def frame(self, sql: str, params: Params = None) -> pl.DataFrame:
        """``execute`` for analysis: the last statement's rows as a Polars frame, same errors."""
        import polars  # noqa: F401  (DuckDB's .pl() needs it; imported here so a pull never loads it)

        with self._errors(sql):
            frame: pl.DataFrame = self._con.sql(sql, params=params).pl()
            return frame

    @contextmanager
    def registered(self, name: str, data: Any) -> Iterator[None]:
        """``data`` (an Arrow table or Polars frame) visible to SQL as ``name`` inside the block."""
        with self._errors(f"register {name}"):
            self._con.register(name, data)
        try:
            yield
        finally:
            self._con.unregister(name)

    def statements(self, sql: str) -> list[tuple[str, str]]:
        """Parse ``sql`` without running it: (statement type, text) per statement."""
        with self._errors(sql):
            return [(s.type.name, s.query) for s in self._con.extract_statements(sql)]

    def functions_called(self, sql: str) -> set[str]:
        """Names of every function (scalar and table) one statement calls, from DuckDB's own parse tree."""
        tree = self.execute("SELECT json_serialize_sql(CAST(? AS VARCHAR))", [sql]).scalar()
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

        walk(json.loads(tree))
        return found


Params = list[Any] | dict[str, Any] | None


class Result:
    """The rows of the statement a ``Store.execute`` just ran; read them once, before the next one."""

    def __init__(self, store: Store, sql: str) -> None:
        self._store, self._sql = store, sql

    @property
    def columns(self) -> list[str]:
        return [d[0] for d in self._store._con.description or []]

    def rows(self) -> list[tuple[Any, ...]]:
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
