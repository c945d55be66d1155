"""The error tree of flowsync: every failure a user can cause or meet.

Owns: the exception classes. Every third-party error (httpx, duckdb, pydantic,
yaml) is wrapped at the boundary that meets it, with ``raise ... from e``, into
one of these, so the CLI can print one clear line and exit with a documented
code. Must not: print, log, or hold secrets in messages.

    FlowsyncError                 base; exit code 1
    ├── ConfigError               bad settings, flags, files (exit 2)
    ├── ApiError                  the Prefect API failed or answered nonsense (exit 3)
    │   ├── AuthError             401/403 (exit 4)
    │   └── UncertainError        a call that changes data got no answer: it may have been applied
    ├── StoreError                the DuckDB file cannot be used (exit 5)
    │   ├── StoreLockedError      another process holds the file (exit 6)
    │   └── QueryError            a statement failed: ``.detail``, ``.sql``, ``.kind`` (exit 5)
    │       ├── ReadOnlyError     it would change a file opened read-only (exit 5)
    │       └── SandboxError      it reached for files, network or extensions (sandboxed store)
    └── PolicyError               a policy file or rule is invalid (exit 7)
        └── PolicyLimitError      a rule selects more runs than allowed (exit 8)

Exit code 9 is reserved for a run that finished with partial failures
(an apply where some batches failed); 130 for an interrupt.
"""

from __future__ import annotations


class FlowsyncError(Exception):
    """Base class. ``str(err)`` is the one line the CLI prints; ``hint``, when not empty,
    is help that follows it on the next lines (DuckDB's ``Did you mean "flow_runs"?``)."""

    exit_code = 1
    hint = ""


class ConfigError(FlowsyncError):
    exit_code = 2


class ApiError(FlowsyncError):
    exit_code = 3


class AuthError(ApiError):
    exit_code = 4


class UncertainError(ApiError):
    """A non-idempotent call failed in transit (5xx, dropped connection, timeout,
    unreadable body): the server may or may not have applied it. Never resend it
    blindly; read the server's state first. ``problem`` says what went wrong."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


class StoreError(FlowsyncError):
    exit_code = 5


class StoreLockedError(StoreError):
    """``holder_role``: pull, apply, reader, notebook or unknown; ``holder_pid`` when known."""

    exit_code = 6

    def __init__(
        self, message: str, *, holder_pid: int | None = None, holder_role: str = "unknown"
    ) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid
        self.holder_role = holder_role


class QueryError(StoreError):
    """A statement DuckDB refused or failed: raised only by the store's query path.

    ``detail`` is DuckDB's first line (``Binder Error: ...``), ``kind`` its error
    class (``BinderException``), ``sql`` the statement, ``hint`` the rest of DuckDB's
    message: its suggestions (``Did you mean "flow_runs"?``, candidate columns, a
    macro's parameters) and the ``LINE 1: ...`` pointer. ``str()`` is
    ``Query failed: <detail>``.
    """

    def __init__(self, detail: str, *, sql: str, kind: str, hint: str = "") -> None:
        super().__init__(f"Query failed: {detail}")
        self.detail = detail
        self.sql = sql
        self.kind = kind
        self.hint = hint


class ReadOnlyError(QueryError):
    """The statement would change a file opened read-only (``path``)."""

    def __init__(self, detail: str, *, sql: str, kind: str, path: str, hint: str = "") -> None:
        super().__init__(detail, sql=sql, kind=kind, hint=hint)
        self.path = path


class SandboxError(QueryError):
    """A query on a sandboxed store tried to read a file, the network or an extension."""


class PolicyError(FlowsyncError):
    exit_code = 7


class PolicyLimitError(PolicyError):
    exit_code = 8


PARTIAL_FAILURE_EXIT = 9
INTERRUPTED_EXIT = 130
