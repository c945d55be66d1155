"""The roles a ``Store`` is opened in, each a type that carries its guarantees.

Owns ``Reader`` (read-only: DuckDB refuses every write), ``Writer`` (the file's one
writer: its memory capped for a write job, ``budget_memory``, and its writes on one
thread, ``single_threaded``), ``Sandbox`` (rule SQL: files, network and extensions
off, configuration locked, spill capped at ``SANDBOX_SPILL``, ``select``),
``SandboxedReader``, ``SandboxedWriter`` (apply: a writer and a sandbox, rule SQL in
a transaction always rolled back) and ``Scratch`` (a working file of flowsync's own,
no migrations). Each is opened by ``Store``'s constructor of the same name
(``store/connect.py``), never directly; a function that needs a role's guarantee
takes its type (``def decide_scope(store: Sandbox, ...)``). Must not: open a file
(that is ``Store._open``), or know about the API.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from flowsync.errors import StoreError
from flowsync.store.connect import WRITE_MEMORY, Store
from flowsync.store.session import Params

__all__ = [
    "SANDBOX_SPILL",
    "Reader",
    "Sandbox",
    "SandboxedReader",
    "SandboxedWriter",
    "Scratch",
    "Writer",
]

# What rule SQL may spill to disk (sorts, joins, recursive CTEs) before DuckDB stops it.
SANDBOX_SPILL = "1GiB"


class Reader(Store):
    """A read-only connection (``Store.reader``): a published snapshot, the live file, or
    several files as one. DuckDB refuses every write on it (``ReadOnlyError``)."""

    read_only = True


# The WAL size (bytes) at which a writer's commit checkpoints (DuckDB's default: 16 MB).
WRITE_CHECKPOINT = 128 * 2**20
# ``Writer.checkpoint_early`` checkpoints this far below it (a batch's audit rows: ~0.2 MB).
CHECKPOINT_MARGIN = 16 * 2**20


class Writer(Store):
    """The file's one writer (``Store.writer``): migrated, recorded, holding DuckDB's write
    lock for as long as it is open, its memory capped for a write job."""

    def _prepare(self, memory_limit_mb: int | None) -> None:
        self.budget_memory(fixed_mb=memory_limit_mb)
        # DuckDB checkpoints when the WAL passes 16 MB by default: a full pull of a million
        # runs checkpointed every few commits, each rewriting the table's last row groups
        # (66.5 s of CPU against 51.1 s at 128 MB, replayed pages), and left the file half
        # as large again (251 MB against 165 MB). Committed rows past the memory cap wait in
        # the temp folder until the checkpoint; a killed process's WAL is replayed at the next
        # open, as before.
        # (BENCHMARKS.md, "The writer's checkpoints".)
        self._con.execute(f"SET checkpoint_threshold = '{WRITE_CHECKPOINT // 1024}KiB'")
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

    def checkpoint_early(self) -> bool:
        """Checkpoint now if the WAL is within ``CHECKPOINT_MARGIN`` of the threshold, so
        that no commit smaller than that margin makes DuckDB checkpoint (0.4-1 s at a million
        runs). For a caller whose commits must stay short at certain moments (apply's audit
        rows right before a call): it calls this where a pause costs only time. The same
        checkpoints as DuckDB would make, a few commits earlier. Returns whether it did."""
        try:
            wal = os.path.getsize(f"{self.path}.wal")
        except OSError:
            return False
        if wal < WRITE_CHECKPOINT - CHECKPOINT_MARGIN:
            return False
        self.execute("CHECKPOINT")
        return True

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
    is one SELECT, the policy checks: ``flowsync.policy.rulesql``.)"""

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
    transaction that is always rolled back (``discarded``), so it changes no table.

    DuckDB runs on one thread here, as a pull's writes do (``single_threaded``; fixed
    before the sandbox locks the configuration): each batch's statements touch ~50 rows,
    its decision is made while the call before it is in flight, and worker threads'
    hand-offs took CPU from the server on a shared machine (at a million runs, 2 cores:
    apply / bare bulk loop 0.49x -> 0.53-0.56x; BENCHMARKS.md, "Issue #24")."""

    def _prepare(self, memory_limit_mb: int | None) -> None:
        self._con.execute("SET threads = 1")
        super()._prepare(memory_limit_mb)

    def select(
        self, sql: str, params: Params = None, *, timeout: float | None
    ) -> tuple[list[str], list[dict[str, Any]]]:
        with self.discarded():
            return self.execute(sql, params, timeout=timeout).dicts()
