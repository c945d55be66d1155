"""Opening the DuckDB file: paths checked, locks reported, migrations applied.

Owns: the one ``duckdb`` connection of a command, its transactions, and the
one way to run SQL on it: ``Store.execute`` (rule, audit, report, sync and
export SQL alike), which turns DuckDB's exceptions into typed store errors
(``QueryError``, ``ReadOnlyError``, ``StoreError`` for running out of memory)
carrying the statement and DuckDB's detail; the disk refusing a write (full,
read-only, no permission: ``StorageError``) and a truncated or corrupt file
(``DamagedFileError``, naming the remedy) are typed here too, at open, in
queries and at ``COMMIT``, so no DuckDB traceback reaches a user. Errors carry DuckDB's detail and hint;
``Store.frame``/``typed_frame`` read any DuckDB type into Polars (the ones Polars
cannot hold as DuckDB's text). It also refuses a DuckDB file that is not flowsync's.
The connection itself stays
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
refusals come out as ``SandboxError``.

Versions: ``migrate`` refuses to write a file holding a migration this flowsync
does not know (``NewerFileError``: a newer flowsync wrote it, and writing would
lose what it keeps); a read-only store opens it, with one ``NewerFileWarning``
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
from typing import TYPE_CHECKING, Any

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
    StorageError,
    StoreError,
)
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
# What rule SQL may spill to disk (sorts, joins, recursive CTEs) before DuckDB stops it.
SANDBOX_SPILL = "1GiB"


def snapshot_dir(db: Path) -> Path:
    """``runs.duckdb`` -> ``runs.duckdb.snapshots`` (where ``store/snapshot.py`` publishes)."""
    return db.with_name(db.name + ".snapshots")


SNAPSHOTS_SUFFIX = ".snapshots"


def damaged_error(path: Path, detail: str) -> DamagedFileError:
    """A truncated or corrupt file, with the remedy that fits: a snapshot is replaced by the
    next pull; the live file is restored from its last snapshot, or moved away and re-pulled."""
    path = Path(path)
    if path.parent.name.endswith(SNAPSHOTS_SUFFIX):
        live = path.parent.with_name(path.parent.name[: -len(SNAPSHOTS_SUFFIX)])
        return DamagedFileError(
            f"The published snapshot {path} is damaged ({detail}); run `flowsync pull --db {live}` "
            "to publish a new one, or read the live file (--live).",
            path=str(path),
            detail=detail,
        )
    last = snapshot_dir(path) / "current"
    target = Path(os.path.realpath(last)) if last.is_symlink() else None
    if target is not None and target.is_file():
        restore = f"restore it from the last snapshot (cp {target} {path}), or move it away and"
    else:
        restore = "move it away and"
    return DamagedFileError(
        f"{path} is damaged ({detail}): {restore} run `flowsync pull --db {path}` to read the "
        "history again from the server.",
        path=str(path),
        detail=detail,
    )


_FULL = ("No space left on device", "Disk quota exceeded", "File too large")
_READ_ONLY = ("Read-only file system",)
_PERMISSION = ("Permission denied", "Operation not permitted")
_DAMAGED = (
    "Could not read enough bytes",
    "Corrupt database file",
    "not a valid DuckDB database",
)


def storage_error(path: Path, e: BaseException, *, query: bool = False) -> StoreError | None:
    """The typed error for a filesystem or corruption failure in ``e`` (DuckDB's or the OS's),
    or None when ``e`` is something else. The one place that reads those words.

    ``query``: ``e`` came from a statement, where a user's own ``COPY`` can meet a full
    disk too; only failures on this file (or its WAL, or at COMMIT) are the file's."""
    text = str(e)
    detail = _first_line(e) if isinstance(e, Exception) else text
    if isinstance(e, OSError) and e.strerror:
        detail = e.strerror
    if "Corrupt database file" in text:  # DuckDB's checksum of a block of this file
        return damaged_error(path, detail)
    if query and not (path.name in text or "Failed to commit" in text or "invalidated" in text):
        return None
    if any(w in text for w in _FULL):
        return StorageError(
            f"The disk holding {path} is full ({detail}); nothing from this step was saved. "
            "Free disk space, then run the command again.",
            path=str(path),
            reason="full",
            detail=detail,
        )
    if any(w in text for w in _READ_ONLY):
        return StorageError(
            f"Cannot write {path}: a read-only filesystem refused it or its write-ahead log "
            f"{path.name}.wal ({detail}). Remount it read-write, or choose another --db.",
            path=str(path),
            reason="read-only",
            detail=detail,
        )
    if any(w in text for w in _PERMISSION):
        return StorageError(
            f"Cannot write {path} or its write-ahead log {path}.wal in {path.parent} "
            f"(permission denied: {detail}). Make the file and its directory writable for this "
            "user, or choose another --db.",
            path=str(path),
            reason="permission",
            detail=detail,
        )
    if any(w in text for w in _DAMAGED):
        return damaged_error(path, detail)
    if "database has been invalidated" in text or "Could not write file" in text:
        return StorageError(
            f"Writing {path} failed ({detail}); nothing from this step was saved. "
            "Check the disk, then run the command again.",
            path=str(path),
            reason="io",
            detail=detail,
        )
    return None


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
        # Set when a newer flowsync wrote the file (read-only stores only): its version.
        self.newer_file: str | None = None

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
        lock_context: str | None = None,
    ) -> Store:
        """Open (and for writers create and upgrade) the file; wait up to ``wait`` s for a lock.

        ``sandbox``: files, network and extensions off, configuration locked (see the module).
        ``memory_cap``: cap DuckDB's memory for a write job (``budget_memory`` with
        ``memory_limit_mb``) while the configuration can still change.
        ``lock_context``: how this opener reads (``store/locks.py``), for the advice
        when another process holds the file."""
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

                    raise locked_error(path, str(e), read_only=read_only, how=lock_context) from e
                if "different configuration" in str(e):
                    raise StoreError(
                        f"{path} is already open in this process with other settings; close it first."
                    ) from e
                typed = storage_error(path, e)
                if typed is not None:
                    raise typed from e
                raise StoreError(f"Cannot open {path}: {str(e).splitlines()[0]}") from e
        store = cls(con, path, read_only, sandboxed=sandbox)
        try:
            with store._errors("open"):
                session_settings(con)
                if migrate:
                    store.migrate()
                if memory_cap:
                    store.budget_memory(fixed_mb=memory_limit_mb)
                if sandbox:
                    con.execute(f"SET max_temp_directory_size = '{SANDBOX_SPILL}'")
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
            detail, hint = _first_line(e), _hint(e)
            kind = type(e).__name__
            if isinstance(e, duckdb.InterruptException) and timeout and fired[0]:
                raise QueryTimeoutError(
                    f"stopped after {timeout:g}s (time limit)", sql=sql, kind=kind, seconds=timeout
                ) from e
            if self.read_only and "read-only mode" in str(e):
                raise ReadOnlyError(detail, sql=sql, kind=kind, path=str(self.path)) from e
            if isinstance(e, duckdb.PermissionException) or (
                self.sandboxed and "configuration has been locked" in str(e)
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
