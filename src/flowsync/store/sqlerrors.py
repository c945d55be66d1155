"""DuckDB's exceptions, read once: which typed store error each one is.

Owns the reading of DuckDB's exceptions (their classes and words) outside the
disk's refusals and damaged files, which ``store/files.py`` reads: ``query_error``
(a statement's failure -> ``QueryError``, ``ReadOnlyError``, ``SandboxError``,
``QueryTimeoutError``, or the disk's ``StoreError``), with DuckDB's detail and
``hint``; ``out_of_memory`` (the ``StoreError`` that names the cap and the fix);
and, at open, ``is_lock_error`` and ``is_config_clash``. ``Session._errors``
(``store/session.py``) and ``store/connect.py`` raise what these return. Must not:
run SQL, open a connection, or know about the API.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from flowsync.errors import QueryError, QueryTimeoutError, ReadOnlyError, SandboxError, StoreError
from flowsync.store.files import first_line, storage_error

__all__ = ["hint", "is_config_clash", "is_lock_error", "out_of_memory", "query_error"]


def hint(e: Exception) -> str:
    """What DuckDB says after its first line: ``Did you mean "flow_runs"?``, candidate
    columns or macros, the ``LINE 1:`` pointer (its indentation kept, so the ``^`` aligns)."""
    lines = str(e).strip().splitlines()[1:]
    return "\n".join(line.replace("\t", "    ").rstrip() for line in lines if line.strip())


def is_lock_error(err: Exception) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


def is_config_clash(err: Exception) -> bool:
    """The file is already open in this process with other settings (DuckDB allows one)."""
    return "different configuration" in str(err)


def out_of_memory(path: Path, budget: int | None) -> StoreError:
    """DuckDB ran out of memory on ``path``, under ``budget`` (bytes) when this command set one."""
    if budget:  # a cap this command set (`pull --memory-limit` changes it)
        cap = f" under its {budget // 2**20} MB cap"
        fix = " Re-run with a larger --memory-limit (MB)."
    else:
        cap, fix = "", " Free some memory (or close other programs) and run it again."
    return StoreError(
        f"DuckDB ran out of memory{cap} on {path}; nothing from this step was saved.{fix}"
    )


def query_error(
    e: duckdb.Error,
    sql: str,
    *,
    path: Path,
    read_only: bool,
    sandbox: bool,
    timeout: float | None,
    timed_out: bool,
) -> StoreError:
    """The typed error for ``e``, raised by ``sql`` on ``path``: ``timed_out`` when the
    statement's time limit (``timeout``) interrupted it."""
    typed = storage_error(path, e, query=True)
    if typed is not None:
        return typed
    detail, more = first_line(e), hint(e)
    kind = type(e).__name__
    if isinstance(e, duckdb.InterruptException) and timeout and timed_out:
        return QueryTimeoutError(
            f"stopped after {timeout:g}s (time limit)", sql=sql, kind=kind, seconds=timeout
        )
    if read_only and "read-only mode" in str(e):
        return ReadOnlyError(detail, sql=sql, kind=kind, path=str(path))
    if isinstance(e, duckdb.PermissionException) or (
        sandbox and "configuration has been locked" in str(e)
    ):
        return SandboxError(detail, sql=sql, kind=kind, hint=more)
    return QueryError(detail, sql=sql, kind=kind, hint=more)
