"""Opening the DuckDB file in a role, and what opening it checks and upgrades.

Owns ``Store``, a DuckDB file with flowsync's schema, and its openers, one per
role (``Store.writer``, ``.reader``, ``.sandboxed``, ``.sandboxed_writer``,
``.scratch``), each returning the type that carries the role's guarantees
(``store/roles.py``: ``Writer`` lock, migrations, newer-file refusal, memory cap;
``Reader`` read-only: snapshot, live file or several files; ``Sandbox`` rule SQL:
files, network and extensions off, configuration locked, spill capped;
``SandboxedWriter`` apply: both). Also the settings every connection starts with,
the latest snapshot or the live file (``_latest``), the migrations, and the
refusal of a DuckDB file that is not flowsync's. How SQL runs on the connection
once open is ``store/session.py`` (``Session``, the base of ``Store``); DuckDB's
errors are typed by ``store/sqlerrors.py`` and, the disk's refusals and damaged
files, by ``store/files.py``, so no DuckDB traceback reaches a user.
``flowsync.connect()`` (``store/notebook.py``) is the documented exception to the
private connection: a notebook asks for a DuckDB connection to run its own SQL.

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
wrote the file). Must not: offer a second way to run SQL (that is
``Session.execute``), or know about the API.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import duckdb

from flowsync import __version__
from flowsync.config import check_wait
from flowsync.errors import (
    DamagedFileError,
    NewerFileError,
    NewerFileWarning,
    OlderSchemaError,
    PartialFileWarning,
    QueryError,
    StoreError,
    StoreLockedError,
)
from flowsync.store import locks, migrations
from flowsync.store.files import check_creatable, check_not_snapshot, check_path, storage_error
from flowsync.store.session import Session
from flowsync.store.sqlerrors import is_config_clash, is_lock_error

if TYPE_CHECKING:
    from flowsync.store.multi import Sources
    from flowsync.store.roles import Reader, Sandbox, SandboxedWriter, Scratch, Writer

__all__ = ["SANDBOX_CONFIG", "WRITE_MEMORY", "Store", "session_settings"]

# A write job's DuckDB memory cap (see ``Writer.budget_memory``). Flat in the size of
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


def session_settings(con: duckdb.DuckDBPyConnection) -> None:
    """What every connection sets first: UTC, and no progress bar (DuckDB draws it on
    stdout, into `--json` and csv output, when a query runs over 2 s, e.g. the m003
    migration of a million-run file)."""
    con.execute("SET TimeZone = 'UTC'")
    # In a Jupyter kernel DuckDB refuses the setting unless ipywidgets is installed; there
    # the bar is a widget, not our stdout.
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")


# The files a writer of this process holds (pull, apply, ``plan --refresh`` in another thread
# of a long-running service or notebook kernel): DuckDB's file lock is its process's, so a
# second connection from this process would get the file as well. Released by ``close``.
_WRITING: set[str] = set()
_WRITING_LOCK = threading.Lock()


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _held_here(path: Path, how: str | None) -> StoreLockedError:
    finish = "wait for it to close" if how not in (None, locks.WRITE) else "wait for it to finish"
    return StoreLockedError(
        f"{path} is held by a writer of this process (a pull, apply or plan --refresh in "
        f"another thread, or a connection opened with read_only=False): {finish}, or pass "
        "--wait SECONDS (wait=SECONDS).",
        holder_pid=os.getpid(),
        holder_role="this process",
    )


def _connect(
    path: Path, *, read_only: bool, sandbox: bool, wait: float, lock_context: str | None
) -> duckdb.DuckDBPyConnection:
    """DuckDB's connection to ``path`` (checked first), waiting up to ``wait`` s for its lock:
    another process's, or a writer of this process (``_WRITING``; a writer opened here is
    added to it)."""
    deadline = time.monotonic() + check_wait(wait)
    delay = 0.2
    graced = False
    key = _key(path)
    while True:
        locked: StoreLockedError | None = None
        try:
            check_path(path, read_only=read_only)
        except StoreLockedError as e:  # a file another process is creating: wait as for a lock
            locked = e
        if locked is None:
            with _WRITING_LOCK:
                if key in _WRITING:
                    locked = _held_here(path, lock_context)
                elif not read_only:
                    _WRITING.add(key)
        if locked is None:
            try:
                return duckdb.connect(
                    str(path), read_only=read_only, config=dict(SANDBOX_CONFIG) if sandbox else {}
                )
            except BaseException as e:
                if not read_only:
                    with _WRITING_LOCK:
                        _WRITING.discard(key)
                if read_only and isinstance(e, duckdb.Error) and is_config_clash(e):
                    con = _open_second_name(path, sandbox)
                    if con is not None:
                        return con
                if not isinstance(e, duckdb.Error) or not is_lock_error(e):
                    _open_error(path, e)
                locked = locks.locked_error(path, str(e), read_only=read_only, how=lock_context)
                locked.__cause__ = e
        # Held by another process or a writer of this one: wait up to the deadline. A writer
        # held off by a reader that reads the live file for a moment (status, a report's
        # last-pull time: a Prometheus textfile job beside the scheduled pull) waits for it
        # a little whatever its --wait, rather than fail the pull.
        if not read_only and locked.brief and not graced:
            graced = True
            deadline = max(deadline, time.monotonic() + locks.BRIEF_HOLD_GRACE)
        if time.monotonic() >= deadline:
            raise locks.after_waiting(locked, wait)
        time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
        delay = min(delay * 1.5, 2.0)


def _open_second_name(path: Path, sandbox: bool) -> duckdb.DuckDBPyConnection | None:
    """``path`` opened read-only under a second name, when it is a published generation
    this process already has open with other settings (``snapshot.second_name``); else None."""
    from flowsync.store import snapshot

    for _ in range(3):  # a publish removing a second name it took for a leftover: another
        with snapshot.second_name(path) as link:
            if link is None:
                return None
            try:
                return duckdb.connect(
                    str(link), read_only=True, config=dict(SANDBOX_CONFIG) if sandbox else {}
                )
            except duckdb.Error:
                if link.exists():
                    return None  # the clash is what the caller says
    return None


def _open_error(path: Path, e: BaseException) -> NoReturn:
    """Raise what an open of ``path`` that failed otherwise than on a lock is to the caller."""
    if not isinstance(e, duckdb.Error):
        raise e
    if is_config_clash(e):
        raise StoreError(
            f"{path} is already open in this process with other settings; close it first."
        ) from e
    raise storage_error(path, e) or StoreError(
        f"Cannot open {path}: {str(e).splitlines()[0]}"
    ) from e


S = TypeVar("S", bound="Store")

# DuckDB's errors for a name a statement uses that the file does not have (as it is now).
_SCHEMA_ERRORS = ("BinderException", "CatalogException")


class Store(Session):
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

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        super().__init__(con, path)
        # Set when a newer flowsync wrote the file (read-only stores only): its version.
        self.newer_file: str | None = None
        # A published snapshot a later pull found the server unchanged from: that pull's start.
        self.confirmed_at: datetime | None = None
        self._held: str | None = None  # a writer's key in ``_WRITING`` until it lets go

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
        from flowsync.store.roles import Writer

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
        from flowsync.store.roles import Reader

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
        from flowsync.store.roles import SandboxedReader

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
        from flowsync.store.roles import SandboxedWriter

        return SandboxedWriter._open(Path(path), wait=wait, memory_limit_mb=memory_limit_mb)

    @classmethod
    def scratch(cls, path: str | os.PathLike[str], *, memory_limit_mb: int) -> Scratch:
        """A working file of flowsync's own, never a user's (a plan's runs): no migrations,
        no identity, DuckDB's memory capped at ``memory_limit_mb``."""
        from flowsync.store.roles import Scratch

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
        if not cls.read_only:
            cls._check_before_writing(path)
        con = _connect(
            path,
            read_only=cls.read_only,
            sandbox=cls._sandbox,
            wait=wait,
            lock_context=lock_context,
        )
        store = cls(con, path)
        if not cls.read_only:
            store._held = _key(path)  # as registered: a later chdir changes no key
        try:
            with store._errors("open"):
                session_settings(con)
                store.migrate()
                store._prepare(memory_limit_mb)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.detach()

    def detach(self) -> None:
        """Let go of this writer's hold on its file, once (a second close releases no later
        writer's). Also for a connection handed to a caller that closes it itself
        (``flowsync.connect``): this process's other writers no longer wait for it (its
        close cannot be seen)."""
        held, self._held = self._held, None
        if held is not None:
            with _WRITING_LOCK:
                _WRITING.discard(held)

    @classmethod
    def _check_before_writing(cls, path: Path) -> None:
        """A write-ahead log left by a process killed mid-write is replayed into the file by
        the first read-write open. Before that, such a file is checked on a read-only
        connection, so one that is not flowsync's, or that a newer flowsync wrote, is refused
        unchanged."""
        if path.is_file() and path.with_name(path.name + ".wal").exists():
            cls._refuse_unwritable(path)
        # (a log without its file: DuckDB drops it when it creates the file)

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether the file is there; a path the system cannot look up at all (a name too
        long) is a ``StoreError`` naming it."""
        try:
            return Path(path).exists()
        except OSError as e:
            raise StoreError(
                f"Cannot use --db {path}: {e.strerror or e}. Choose another path."
            ) from e

    @classmethod
    def check_writable(cls, path: str | os.PathLike[str]) -> None:
        """What a writer would refuse (a file not flowsync's, one a newer flowsync wrote),
        checked on a read-only connection, so a command can refuse before it asks anything
        (apply, before its prompt; a first pull, before it asks the server). A file that
        does not exist yet: the place it would be made in (``files.check_creatable``). Passes
        a file that a writer holds now (its own open then waits and says so)."""
        from flowsync.store.roles import Writer

        check_not_snapshot(Path(path))
        if Path(path).exists():
            Writer._refuse_unwritable(Path(path))
        else:
            check_creatable(Path(path))

    @classmethod
    def _refuse_unwritable(cls, path: Path) -> None:
        try:
            con = _connect(path, read_only=True, sandbox=False, wait=0.0, lock_context=None)
        except StoreLockedError:
            # A writer holds the file (a log is its own, not a leftover): the writer's own
            # open waits for it, and says so as a writer.
            return
        except StoreError as e:
            if isinstance(e.__cause__, duckdb.Error) and is_config_clash(e.__cause__):
                return  # open read-write in this process (a log is that connection's own)
            raise
        try:
            probe = cls(con, path)  # the writer's own checks, nothing written
            with probe._errors("open"):
                applied = probe.applied_migrations()
                probe._check_newer(applied)
                if not applied:
                    probe._refuse_foreign()
                else:
                    probe._check_state()
        finally:
            con.close()

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

        check_wait(wait)  # (a snapshot is opened without waiting: checked all the same)

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
                # live is what that version did (its next pull publishes one). So has one
                # whose first pull stopped: readable, with a warning that it is partial.
                store = cls._open(
                    db,
                    wait=wait,
                    lock_context=lock_context or locks.FALLBACK,
                    memory_limit_mb=memory_limit_mb,
                )
                store._warn_if_partial()
                return store
            if problem and info is not None and not info.path.exists():
                # Removed between resolving ``current`` and opening it, if ``current`` moved on.
                again, _ = snapshot.inspect(db)
                if again is not None and again.path != info.path:
                    continue
            if problem:
                raise snapshot.damaged(db, problem)
            assert info is not None
            try:
                published = cls._open(info.path, memory_limit_mb=memory_limit_mb)
                if info.pull_id is None:  # not a finished pull's: a stopped first pull's too
                    published._warn_if_partial(db)
                if info.confirmed_at is not None:
                    published._confirmed(info.confirmed_at)
                return published
            except DamagedFileError:
                raise
            except OlderSchemaError:
                # Published by an older flowsync: the file is what to upgrade, not the copy.
                raise OlderSchemaError(
                    f"{db}'s published snapshot has an older schema (an older flowsync "
                    f"published it); run `flowsync pull --db {db}` once to upgrade the file "
                    "and publish it again.",
                    path=str(db),
                ) from None
            except StoreError:
                if info.path.exists():
                    raise
        raise StoreError(
            f"The snapshots of {db} changed {attempts} times while opening one; try again."
        )

    def _confirmed(self, at: datetime) -> None:
        """A snapshot a later pull found the server unchanged from (``SnapshotInfo.confirmed_at``):
        its ``last_pull_at()`` is that pull's start on this connection (a macro of the
        connection's own, which the file's views and macros call in its place; the snapshot
        file is never written), so "waiting now" counts a run due since it was published."""
        self.confirmed_at = at
        self._con.execute(  # (a macro takes no parameters: the time, ours, as a literal)
            "CREATE OR REPLACE TEMP MACRO last_pull_at() AS "
            f"least(now(), TIMESTAMPTZ '{at.isoformat()}')"
        )

    @contextlib.contextmanager
    def _errors(self, sql: str, timeout: float | None = None) -> Iterator[None]:
        """``Session._errors``; on a file a newer flowsync wrote, a statement that names a
        table, column or macro the file no longer has this way (its migrations may rename or
        drop them) also says whose file it is and to upgrade."""
        try:
            with super()._errors(sql, timeout):
                yield
        except QueryError as e:
            if self.newer_file is None or e.kind not in _SCHEMA_ERRORS or type(e) is not QueryError:
                raise
            who = (
                "a newer flowsync" if self.newer_file == "newer" else f"flowsync {self.newer_file}"
            )
            raise QueryError(
                f"{e.detail} ({self.path} was written by {who}, newer than this flowsync "
                f"{__version__}, which may not know its tables and columns: upgrade flowsync "
                "(pip install -U flowsync) where this command runs)",
                sql=e.sql,
                kind=e.kind,
                hint=e.hint,
            ) from e.__cause__

    # -- schema -----------------------------------------------------------

    def applied_migrations(self) -> set[str]:
        return {r[0] for r in self._own_rows("SELECT name FROM _flowsync_migrations")}

    def file_versions(self) -> dict[str, str]:
        """What ``_flowsync_file`` records: written_by, last_written_by, schema (empty before m004)."""
        return {k: v for k, v in self._own_rows("SELECT key, value FROM _flowsync_file")}

    def _own_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` over one of flowsync's own tables; none when the file lacks
        the table (a new file, or one from before the migration that adds it).

        Read directly, not looked up first: DuckDB's first catalog listing on a connection
        (``information_schema``, ``duckdb_tables()``) costs 7-14 ms, paid on every open.
        Never inside a transaction, which a failed statement would abort."""
        if self._in_transaction:
            raise StoreError(f"{sql!r} cannot run inside a transaction")
        try:
            return self.execute(sql).rows()
        except QueryError as e:
            if e.kind == "CatalogException" and type(e) is QueryError:
                return []
            if e.kind == "BinderException" and type(e) is QueryError:
                # flowsync's own table with columns this version does not know
                raise StoreError(
                    f"{self.path}: flowsync's own bookkeeping in it is of a shape this flowsync "
                    f"{__version__} does not know (a newer flowsync's, or changed by hand: "
                    f"{e.detail}); upgrade flowsync, or use another --db. Nothing was "
                    "changed."
                ) from e
            raise

    def _check_newer(self, applied: set[str]) -> None:
        """Refuse to write a file a newer flowsync wrote; warn once when only reading it."""
        unknown = sorted(applied - {name for name, _ in migrations.MIGRATIONS})
        if not unknown:
            return
        written_by = self.file_versions().get("written_by", "")
        if written_by and version_key(written_by) <= version_key(__version__):
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

    def _warn_if_partial(self, db: Path | None = None) -> None:
        """One ``PartialFileWarning`` when no pull has finished on this file (a snapshot of
        ``db``) and it holds runs: a first pull stopped (killed, failed) part-way, whose runs
        readers see."""
        db = db or self.path
        rows = self._own_rows(
            "SELECT (SELECT count(*) FROM sync_runs WHERE status = 'ok' AND mode IN "
            "('full', 'incremental')), (SELECT count(*) FROM sync_runs), "
            "(SELECT count(*) FROM flow_runs)"
        )
        finished, pulls, runs = rows[0] if rows else (0, 0, 0)
        if pulls and not finished and runs:
            warnings.warn(
                PartialFileWarning(
                    f"{db}: its first pull stopped before it finished, so it holds "
                    f"{runs:,} runs, part of the server's; run `flowsync pull --db {db}` "
                    "to finish it."
                ),
                stacklevel=4,
            )

    def _check_state(self) -> None:
        """Refuse to write a file whose ``sync_state`` holds a value this flowsync reads in a
        shape it does not know (``sync_log.check_shapes``): a newer flowsync's, same schema."""
        from flowsync.store import sync_log

        sync_log.check_shapes(self)

    def _record_writer(self) -> None:
        """The file says which flowsync wrote it: the newest ever, the latest, its schema."""
        now = datetime.now(timezone.utc)
        known = self.file_versions()
        newest = known.get("written_by", "")
        if not newest or version_key(newest) < version_key(__version__):
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
        """A DuckDB file holding anything but no flowsync migration is someone else's: never
        add ours. (An empty ``_flowsync_migrations`` alone is ours: a first migration that
        never committed, killed or out of disk; the next writer goes on.)"""
        held = [
            f"{kind} {name}"
            for kind, name in self.execute(
                # flowsync's own record is main's table of that name (read directly,
                # ``_own_rows``); one in another schema is someone else's
                "SELECT 'table', CASE WHEN schema_name = 'main' THEN table_name "
                "ELSE schema_name || '.' || table_name END FROM duckdb_tables() WHERE "
                "database_name = current_database() AND NOT internal AND NOT "
                "(schema_name = 'main' AND table_name = '_flowsync_migrations') "
                "UNION ALL SELECT 'view', view_name FROM duckdb_views() WHERE database_name = "
                "current_database() AND NOT internal "
                "UNION ALL SELECT 'sequence', sequence_name FROM duckdb_sequences() WHERE "
                "database_name = current_database() "
                "UNION ALL SELECT 'macro', function_name FROM duckdb_functions() WHERE "
                "database_name = current_database() AND NOT internal "
                "AND function_type IN ('macro', 'table_macro') ORDER BY 1, 2"
            ).rows()
        ]
        if held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise StoreError(
                f"{self.path} is a DuckDB database but not a flowsync file (it holds {shown}); "
                "choose another --db, or a new path for flowsync pull to create."
            )

    def _check_recorded(self, applied: set[str]) -> None:
        """Before a migration builds on them: the tables the recorded migrations made are
        there, with their columns (made again in memory to compare). A file whose record
        says more than its tables hold was made or changed by hand: refused, nothing written."""
        columns = (
            "SELECT table_name, list(column_name) FROM duckdb_columns() WHERE "
            "database_name = current_database() AND schema_name = 'main' GROUP BY 1"
        )
        with duckdb.connect() as made:
            for name, fn in migrations.MIGRATIONS:
                if name in applied:
                    fn(made)
            want = dict(made.execute(columns).fetchall())
        have = dict(self._con.execute(columns).fetchall())
        lacking = sorted(
            [table for table in want if table not in have]
            + [
                f"{t}.{c}"
                for t, cols in want.items()
                if t in have
                for c in cols
                if c not in have[t]
            ]
        )
        if lacking:
            shown = ", ".join(lacking[:4]) + (", ..." if len(lacking) > 4 else "")
            raise StoreError(
                f"{self.path} records flowsync migrations up to {max(applied)} but lacks what "
                f"they made ({shown}): it was made or changed by hand, or is not flowsync's. "
                "Nothing was changed; use another --db."
            )

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in a transaction with its record.

        A file with a migration this flowsync does not know: ``NewerFileError`` for a
        writer (before anything is written), a ``NewerFileWarning`` for a reader."""
        applied = self.applied_migrations()
        self._check_newer(applied)
        if applied and not self.read_only:
            self._check_state()
        todo = migrations.pending(applied)
        if not todo:
            if not self.read_only:
                self._record_writer()
            return []
        if not applied:
            self._refuse_foreign()
        else:
            self._check_recorded(applied)
        if self.read_only:
            raise OlderSchemaError(
                f"{self.path} has an older schema ({len(todo)} migrations pending); "
                f"run `flowsync pull --db {self.path}` once to upgrade it.",
                path=str(self.path),
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


# A pre-release's tag (PEP 440, and the spellings it normalises), in order: all before
# its release.
_PRE_RELEASE = {
    "dev": 0,
    "a": 1,
    "alpha": 1,
    "b": 2,
    "beta": 2,
    "c": 3,
    "rc": 3,
    "pre": 3,
    "preview": 3,
}


def version_key(version: str) -> tuple[Any, ...]:
    """``0.10.1`` > ``0.9.3``; a pre-release (``0.2.0rc1``, ``0.2.0.dev3``) < its release
    < its post-release or local build; other non-numeric parts sort by their text (no
    packaging dependency)."""
    release = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    numbers = [int(p) for p in release.group(1).split(".")] if release else []
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()  # 1.0 == 1.0.0
    rest = version.strip()[release.end() :] if release else version
    parts = []
    for part in rest.replace("-", ".").replace("+", ".").replace("_", ".").split("."):
        if not part:
            continue
        digits = "".join(c for c in part if c.isdigit())
        parts.append((int(digits) if digits else -1, part))
    tag = re.match(r"[.\-_]?([A-Za-z]+)", rest)
    phase = _PRE_RELEASE.get(tag.group(1).lower(), 4) if tag else 4
    return (tuple(numbers), phase, tuple(parts))
