"""Opening the DuckDB file in a role, and the one way to run SQL on it.

Owns: the one ``duckdb`` connection of a command, opened in one of four roles
whose guarantees are their types (see ``Store``): ``Writer`` (lock, migrations,
newer-file refusal, memory cap), ``Reader`` (read-only: snapshot, live file or
several files), ``Sandbox`` (rule SQL: files, network and extensions off,
configuration locked, spill capped) and ``SandboxedWriter`` (apply: both). Also
its transactions, and ``Store.execute`` (rule, audit, report, sync and export
SQL alike), which turns DuckDB's exceptions into typed store errors
(``QueryError``, ``ReadOnlyError``, ``SandboxError``, ``StoreError`` for running
out of memory) carrying the statement and DuckDB's detail and hint; the disk's
refusals and damaged files are typed by ``store/files.py``, at open, in queries
and at ``COMMIT``, so no DuckDB traceback reaches a user. ``Store.frame``/
``typed_frame`` read any DuckDB type into Polars (the ones Polars cannot hold as
DuckDB's text). It also refuses a DuckDB file that is not flowsync's. The
connection itself stays private (``_con``); only ``store/`` modules reach it,
and a test keeps it so. ``flowsync.connect()`` (``store/notebook.py``) is the
documented exception: a notebook asks for a DuckDB connection to run its own SQL.

A writer holds DuckDB's own file lock for as long as the command runs; a
second writer (or a reader of the live file while a writer runs) gets
``StoreLockedError`` or waits with ``wait``. A sandbox is sandboxed from the
start: DuckDB cannot switch external access back on, so nothing on it may need
the outside (no Parquet, no memory settings after opening).

Versions: ``migrate`` refuses to write a file holding a migration this flowsync
does not know (``NewerFileError``: a newer flowsync wrote it, and writing would
lose what it keeps); a reader opens it, with one ``NewerFileWarning``
(reading is safe: DuckDB cannot write through a read-only connection). A writer
records itself in ``_flowsync_file`` (``written_by``: the newest version that
wrote the file). Must not: know about the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
from duckdb.sqltypes import DuckDBPyType

from flowsync import __version__
from flowsync.errors import (
    DamagedFileError,
    NewerFileError,
    NewerFileWarning,
    QueryError,
    QueryTimeoutError,
    ReadOnlyError,
    SandboxError,
    StoreError,
)
from flowsync.store import locks, migrations
from flowsync.store.files import check_path, first_line, storage_error

if TYPE_CHECKING:
    import polars as pl

    from flowsync.store.multi import Sources

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
# What rule SQL may spill to disk (sorts, joins, recursive CTEs) before DuckDB stops it.
SANDBOX_SPILL = "1GiB"


def session_settings(con: duckdb.DuckDBPyConnection) -> None:
    """What every connection sets first: UTC, and no progress bar (DuckDB draws it on
    stdout, into `--json` and csv output, when a query runs over 2 s, e.g. the m003
    migration of a million-run file)."""
    con.execute("SET TimeZone = 'UTC'")
    # In a Jupyter kernel DuckDB refuses the setting unless ipywidgets is installed; there
    # the bar is a widget, not our stdout.
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")


def _hint(e: Exception) -> str:
    """What DuckDB says after its first line: ``Did you mean "flow_runs"?``, candidate
    columns or macros, the ``LINE 1:`` pointer (its indentation kept, so the ``^`` aligns)."""
    lines = str(e).strip().splitlines()[1:]
    return "\n".join(line.replace("\t", "    ").rstrip() for line in lines if line.strip())


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


def _is_lock_error(err: Exception) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


def _connect(
    path: Path, *, read_only: bool, sandbox: bool, wait: float, lock_context: str | None
) -> duckdb.DuckDBPyConnection:
    """DuckDB's connection to ``path`` (checked first), waiting up to ``wait`` s for its lock."""
    check_path(path, read_only=read_only)
    deadline = time.monotonic() + wait
    delay = 0.2
    while True:
        try:
            return duckdb.connect(
                str(path), read_only=read_only, config=dict(SANDBOX_CONFIG) if sandbox else {}
            )
        except duckdb.Error as e:
            if _is_lock_error(e):
                if time.monotonic() < deadline:
                    time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
                    delay = min(delay * 1.5, 2.0)
                    continue
                raise locks.locked_error(path, str(e), read_only=read_only, how=lock_context) from e
            if "different configuration" in str(e):
                raise StoreError(
                    f"{path} is already open in this process with other settings; close it first."
                ) from e
            raise storage_error(path, e) or StoreError(
                f"Cannot open {path}: {str(e).splitlines()[0]}"
            ) from e


S = TypeVar("S", bound="Store")


class Store:
    """A DuckDB file with flowsync's schema, opened in one of its roles (each a context manager):

    - ``Store.writer``: the file's one writer (pull, ``plan --refresh``, seeders) -> ``Writer``
    - ``Store.reader``: the latest snapshot, or the live file (``sql``, reports, export,
      ``flowsync.connect()``), or several files at once -> ``Reader``
    - ``Store.sandboxed``: rule SQL on the latest snapshot or the live file (``plan``,
      ``policy check``) -> ``Sandbox``
    - ``Store.sandboxed_writer``: apply's writer, which re-decides rule SQL on its own
      connection -> ``SandboxedWriter`` (a ``Writer`` and a ``Sandbox``)

    Code that runs SQL on any of them takes ``Store``; code that needs a role's guarantee
    takes its type (``def decide_scope(store: Sandbox, ...)``)."""

    read_only = False  # DuckDB refuses every write on the connection (ReadOnlyError)
    _sandbox = False  # no files, network or extensions; settings locked (SandboxError)

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        # Private: SQL goes through `execute` so its errors are typed (see tests/test_layering.py).
        self._con = con
        self.path = path
        self.memory_budget: int | None = None
        self._in_transaction = False
        # Set when a newer flowsync wrote the file (read-only stores only): its version.
        self.newer_file: str | None = None

    # -- the roles ----------------------------------------------------------

    @classmethod
    def writer(
        cls,
        path: str | os.PathLike[str],
        *,
        wait: float = 0.0,
        memory_limit_mb: int | None = None,
        lock_context: str | None = None,
    ) -> Writer:
        """The file's one writer: creates it, holds DuckDB's write lock for as long as it is
        open (``wait`` s for it), refuses a file that is not flowsync's or that a newer
        flowsync wrote (``NewerFileError``), applies pending migrations, records itself in
        ``_flowsync_file`` and caps DuckDB's memory for a write job (64 MB;
        ``memory_limit_mb`` replaces it, 0 leaves DuckDB's default). ``lock_context``: how
        this opener is explained when another process holds the file (``store/locks.py``)."""
        return Writer._open(
            Path(path), wait=wait, lock_context=lock_context, memory_limit_mb=memory_limit_mb
        )

    @classmethod
    def reader(
        cls,
        path: str | os.PathLike[str] | Sources,
        *,
        live: bool = False,
        wait: float = 0.0,
        lock_context: str | None = None,
    ) -> Reader:
        """A read-only view: the latest published snapshot (never blocks a pull), or the live
        file with ``live`` or when none is published yet (``wait`` s for its lock). A file
        a newer flowsync wrote opens with one ``NewerFileWarning``; an older schema is
        refused (a pull upgrades it). Several files (a list of paths or ``NAME=PATH``, or
        a dict of name to path) open as one, every table and view with a ``source`` column."""
        if not isinstance(path, (str, os.PathLike)):
            from flowsync.store.multi import connect_sources

            con, label = connect_sources(path, live=live)
            return Reader(con, label)
        return Reader._latest(Path(path), live=live, wait=wait, lock_context=lock_context)

    @classmethod
    def sandboxed(
        cls,
        path: str | os.PathLike[str],
        *,
        live: bool = False,
        wait: float = 0.0,
        lock_context: str | None = None,
        memory_limit_mb: int | None = None,
    ) -> Sandbox:
        """``reader`` for policy rule SQL: also no files, network or extensions, its settings
        locked and its spill to disk capped (``SANDBOX_CONFIG``, ``SANDBOX_SPILL``);
        ``memory_limit_mb`` caps DuckDB's memory (a plan's sorts spill past it)."""
        return SandboxedReader._latest(
            Path(path),
            live=live,
            wait=wait,
            lock_context=lock_context,
            memory_limit_mb=memory_limit_mb,
        )

    @classmethod
    def sandboxed_writer(
        cls, path: str | os.PathLike[str], *, wait: float = 0.0, memory_limit_mb: int | None = None
    ) -> SandboxedWriter:
        """``writer`` that is also a ``Sandbox`` for its whole life: apply re-decides rule SQL
        on the connection that writes its audit (DuckDB opens a file either read-write or
        read-only in one process, and can never switch external access back on)."""
        return SandboxedWriter._open(Path(path), wait=wait, memory_limit_mb=memory_limit_mb)

    @classmethod
    def scratch(cls, path: str | os.PathLike[str], *, memory_limit_mb: int) -> Scratch:
        """A working file of flowsync's own, never a user's (a plan's runs): no migrations,
        no identity, DuckDB's memory capped at ``memory_limit_mb``."""
        return Scratch._open(Path(path), memory_limit_mb=memory_limit_mb)

    @classmethod
    def _open(
        cls: type[S],
        path: Path,
        *,
        wait: float = 0.0,
        lock_context: str | None = None,
        memory_limit_mb: int | None = None,
    ) -> S:
        con = _connect(
            path,
            read_only=cls.read_only,
            sandbox=cls._sandbox,
            wait=wait,
            lock_context=lock_context,
        )
        store = cls(con, path)
        try:
            with store._errors("open"):
                session_settings(con)
                store.migrate()
                store._prepare(memory_limit_mb)
        except BaseException:
            con.close()
            raise
        return store

    def _prepare(self, memory_limit_mb: int | None) -> None:
        """What a role sets after the migrations, while the configuration can still change:
        here, DuckDB's memory cap when one is asked for (a writer budgets its own)."""
        if memory_limit_mb:
            self._con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MiB'")

    @classmethod
    def _latest(
        cls: type[S],
        db: Path,
        *,
        live: bool,
        wait: float,
        lock_context: str | None,
        memory_limit_mb: int | None = None,
        attempts: int = 5,
    ) -> S:
        """The latest snapshot of ``db``, else (``live``, or none published) the live file.

        A damaged snapshot (pointer or file) raises ``DamagedFileError`` naming the fix."""
        from flowsync.store import snapshot

        if live:
            return cls._open(
                db,
                wait=wait,
                lock_context=lock_context or locks.LIVE,
                memory_limit_mb=memory_limit_mb,
            )
        for _ in range(attempts):
            info, problem = snapshot.inspect(db)
            if info is None and not problem:
                # A file last written by an older flowsync has no snapshot yet; reading it
                # live is what that version did (its next pull publishes one).
                return cls._open(
                    db,
                    wait=wait,
                    lock_context=lock_context or locks.FALLBACK,
                    memory_limit_mb=memory_limit_mb,
                )
            if problem and info is not None and not info.path.exists():
                # Removed between resolving ``current`` and opening it, if ``current`` moved on.
                again, _ = snapshot.inspect(db)
                if again is not None and again.path != info.path:
                    continue
            if problem:
                raise snapshot.damaged(db, problem)
            assert info is not None
            try:
                return cls._open(info.path, memory_limit_mb=memory_limit_mb)
            except DamagedFileError:
                raise
            except StoreError:
                if info.path.exists():
                    raise
        raise StoreError(
            f"The snapshots of {db} changed {attempts} times while opening one; try again."
        )

    def close(self) -> None:
        self._con.close()

    def __enter__(self: S) -> S:
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

    def file_versions(self) -> dict[str, str]:
        """What ``_flowsync_file`` records: written_by, last_written_by, schema (empty before m004)."""
        exists = self.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = '_flowsync_file'"
        ).scalar()
        if not exists:
            return {}
        return {k: v for k, v in self.execute("SELECT key, value FROM _flowsync_file").rows()}

    def _check_newer(self, applied: set[str]) -> None:
        """Refuse to write a file a newer flowsync wrote; warn once when only reading it."""
        unknown = sorted(applied - {name for name, _ in migrations.MIGRATIONS})
        if not unknown:
            return
        written_by = self.file_versions().get("written_by", "")
        if written_by and _version_key(written_by) <= _version_key(__version__):
            written_by = ""  # not the version that added the migration: do not name it
        who = f"flowsync {written_by}" if written_by else "a newer flowsync"
        if not self.read_only:
            raise NewerFileError(
                f"{self.path} was written by {who} (schema {unknown[-1]}, unknown to this "
                f"flowsync {__version__}); this version will not write to it. Upgrade flowsync "
                "(pip install -U flowsync) where this command runs, or use another --db.",
                path=str(self.path),
                written_by=written_by,
                ours=__version__,
                unknown=unknown,
            )
        self.newer_file = written_by or "newer"
        warnings.warn(
            NewerFileWarning(
                f"{self.path} was written by {who} (schema {unknown[-1]}); this flowsync "
                f"{__version__} reads it read-only and may miss what that version added: upgrade "
                "flowsync to see it."
            ),
            stacklevel=4,
        )

    def _record_writer(self) -> None:
        """The file says which flowsync wrote it: the newest ever, the latest, its schema."""
        now = datetime.now(timezone.utc)
        known = self.file_versions()
        newest = known.get("written_by", "")
        if not newest or _version_key(newest) < _version_key(__version__):
            newest = __version__
        want = {
            "written_by": newest,
            "last_written_by": __version__,
            "schema": migrations.MIGRATIONS[-1][0],
        }
        if all(known.get(k) == v for k, v in want.items()):
            return  # nothing to write: an unchanged file stays byte-for-byte the same
        with self.transaction():
            for key, value in want.items():
                self.execute(
                    "INSERT INTO _flowsync_file VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value, updated_at = excluded.updated_at",
                    [key, value, now],
                )

    def _refuse_foreign(self) -> None:
        """A DuckDB file with tables but no flowsync record is someone else's: never add ours."""
        tables = [
            r[0]
            for r in self.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = current_database() ORDER BY table_name"
            ).rows()
        ]
        if tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(
                f"{self.path} is a DuckDB database but not a flowsync file (its tables: {shown}); "
                "choose another --db, or a new path for flowsync pull to create."
            )

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in a transaction with its record.

        A file with a migration this flowsync does not know: ``NewerFileError`` for a
        writer (before anything is written), a ``NewerFileWarning`` for a reader."""
        applied = self.applied_migrations()
        self._check_newer(applied)
        todo = migrations.pending(applied)
        if not todo:
            if not self.read_only:
                self._record_writer()
            return []
        if not applied:
            self._refuse_foreign()
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
        self._record_writer()
        return done

    # -- memory -------------------------------------------------------------

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
        """Interrupt the statement when it runs past ``seconds`` (None: no limit)."""
        fired = [False]
        if not seconds:
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
        """DuckDB's exceptions as typed store errors (the only place that reads their text)."""
        try:
            with self.memory_guard(), self._time_limit(timeout) as fired:
                yield
        except duckdb.Error as e:
            typed = storage_error(self.path, e, query=True)
            if typed is not None:
                raise typed from e
            detail, hint = first_line(e), _hint(e)
            kind = type(e).__name__
            if isinstance(e, duckdb.InterruptException) and timeout and fired[0]:
                raise QueryTimeoutError(
                    f"stopped after {timeout:g}s (time limit)", sql=sql, kind=kind, seconds=timeout
                ) from e
            if self.read_only and "read-only mode" in str(e):
                raise ReadOnlyError(detail, sql=sql, kind=kind, path=str(self.path)) from e
            if isinstance(e, duckdb.PermissionException) or (
                self._sandbox and "configuration has been locked" in str(e)
            ):
                raise SandboxError(detail, sql=sql, kind=kind, hint=hint) from e
            raise QueryError(detail, sql=sql, kind=kind, hint=hint) from e

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
        finally:
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


class Reader(Store):
    """A read-only connection (``Store.reader``): a published snapshot, the live file, or
    several files as one. DuckDB refuses every write on it (``ReadOnlyError``)."""

    read_only = True


class Writer(Store):
    """The file's one writer (``Store.writer``): migrated, recorded, holding DuckDB's write
    lock for as long as it is open, its memory capped for a write job."""

    def _prepare(self, memory_limit_mb: int | None) -> None:
        self.budget_memory(fixed_mb=memory_limit_mb)
        super()._prepare(None)  # the cap is set

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


class Sandbox(Store):
    """Where policy rule SQL runs (``Store.sandboxed``, ``Store.sandboxed_writer``): files,
    network and extensions off and the configuration locked for the life of the connection
    (DuckDB cannot switch external access back on), spill to disk capped at
    ``SANDBOX_SPILL``; refusals are ``SandboxError``. ``select`` runs a statement so that it
    changes nothing, under a time limit. (Which functions rule SQL may call, and that it
    is one SELECT, the policy checks: ``flowsync.policy.plan``.)"""

    _sandbox = True

    def _prepare(self, memory_limit_mb: int | None) -> None:
        super()._prepare(memory_limit_mb)
        self._con.execute(f"SET max_temp_directory_size = '{SANDBOX_SPILL}'")
        # Last (after the time zone and a writer's memory cap): nothing, rule SQL included,
        # may change settings from here on.
        self._con.execute("SET lock_configuration = true")

    def select(
        self, sql: str, params: Params = None, *, timeout: float | None
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Run ``sql`` (rows read inside ``timeout`` seconds, None: no limit) so that it
        changes nothing: the column names and the rows as dicts."""
        return self.execute(sql, params, timeout=timeout).dicts()


class SandboxedReader(Reader, Sandbox):
    """``Store.sandboxed``: a read-only ``Sandbox``, its memory capped when asked."""


class Scratch(Store):
    """``Store.scratch``: a working file of flowsync's own (no schema of a user's file)."""

    def migrate(self) -> list[str]:
        return []


class SandboxedWriter(Writer, Sandbox):
    """``Store.sandboxed_writer``: apply's writer, a ``Sandbox`` too. Rule SQL runs in a
    transaction that is always rolled back (``discarded``), so it changes no table."""

    def select(
        self, sql: str, params: Params = None, *, timeout: float | None
    ) -> tuple[list[str], list[dict[str, Any]]]:
        with self.discarded():
            return self.execute(sql, params, timeout=timeout).dicts()


Params = list[Any] | dict[str, Any] | None


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    """``0.10.1`` > ``0.9.3``; a non-numeric part sorts by its text (no packaging dependency)."""
    parts = []
    for part in version.replace("-", ".").replace("+", ".").split("."):
        digits = "".join(c for c in part if c.isdigit())
        parts.append((int(digits) if digits else -1, part))
    return tuple(parts)


class Result:
    """The rows of the statement a ``Store.execute`` just ran; read them once, before the next one."""

    def __init__(
        self,
        store: Store,
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
