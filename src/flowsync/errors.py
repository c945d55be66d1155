"""The error tree of flowsync: every failure a user can cause or meet.

Owns: the exception classes. Every third-party error (httpx, duckdb, pydantic,
yaml) is wrapped at the boundary that meets it, with ``raise ... from e``, into
one of these, so the CLI can print one clear line and exit with a documented
code. Must not: print, log, or hold secrets in messages.

    FlowsyncError                 base; exit code 1
    ├── ConfigError               bad settings, flags, files (exit 2)
    ├── ApiError                  the Prefect API failed or answered nonsense (exit 3)
    │   ├── AuthError             401/403 (exit 4)
    │   ├── UncertainError        a call that changes data got no answer: it may have been applied
    │   ├── NotSentError          a call that changes data never reached the server (safe to resend, after a re-check)
    │   ├── ThrottledError        a call that changes data answered 429: not applied (``retry_after``)
    │   ├── NotFoundError         404/405 for ``path``: no such object (any more), or no such route
    │   ├── UnavailableError      a read failed on every try (429, 5xx, dropped): the endpoint is there
    │   └── UnsupportedError      the server lacks an endpoint (``endpoint``, ``version``, ``needs``)
    ├── StoreError                the DuckDB file cannot be used (exit 5)
    │   ├── StoreLockedError      another process holds the file (exit 6)
    │   ├── NewerFileError        a newer flowsync wrote it: this one refuses to write it (exit 5)
    │   ├── StorageError          the disk refused a write: full, read-only, no permission (exit 5)
    │   ├── DamagedFileError      the file or a snapshot is truncated or corrupt (exit 5)
    │   └── QueryError            a statement failed: ``.detail``, ``.sql``, ``.kind`` (exit 5)
    │       ├── ReadOnlyError     it would change a file opened read-only (exit 5)
    │       ├── SandboxError      it reached for files, network or extensions (sandboxed store)
    │       └── QueryTimeoutError it ran longer than its time limit and was stopped
    └── PolicyError               a policy file or rule is invalid (exit 7)
        └── PolicyLimitError      a rule selects more runs than allowed (exit 8)

    FlowsyncWarning               something a command goes on with but the user must hear
                                  (the CLI prints it once on stderr; notebooks get a warning)

Exit code 9 is reserved for a run that finished with partial failures
(an apply where some batches failed); 130 for an interrupt (SIGINT), 143 for
SIGTERM (``SignalInterrupt``: 128 + the signal number, as shells report it).
"""

from __future__ import annotations


class FlowsyncError(Exception):
    """Base class. ``str(err)`` is the one line the CLI prints; ``hint``, when not empty,
    is help that follows it on the next lines (DuckDB's ``Did you mean "flow_runs"?``)."""

    exit_code = 1
    hint = ""

    def __init__(self, *args: object, hint: str = "") -> None:
        super().__init__(*args)
        if hint:
            self.hint = hint


class ConfigError(FlowsyncError):
    exit_code = 2


class ApiError(FlowsyncError):
    exit_code = 3


class AuthError(ApiError):
    """The server (or something in front of it) refused the credentials: ``status`` 401 or 403."""

    exit_code = 4

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class UncertainError(ApiError):
    """A non-idempotent call failed in transit (5xx, dropped connection, timeout,
    unreadable body): the server may or may not have applied it. Never resend it
    blindly; read the server's state first. ``problem`` says what went wrong;
    ``status`` is the HTTP status when the Prefect server itself answered (its own error
    body, or a 2xx with a body cut short: it has finished with the request then), None
    when no answer came or something in front of it answered (a gateway's 502/504: the
    server may still be working on it)."""

    def __init__(self, message: str, problem: str, status: int | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.status = status

    @classmethod
    def unreadable(cls, call: str, expected: str) -> UncertainError:
        """``call`` (one that changes runs) was answered 2xx with a body of another shape than
        ``expected`` (a gateway's rewrite, a newer server's format): the server has finished
        with it, but what it did is not known. Not a refusal: its runs are read back."""
        return cls(
            f"{call} answered with something other than {expected}; the server may have applied it.",
            f"a 2xx answer that is not {expected}",
            200,
        )


class NotSentError(ApiError):
    """A non-idempotent call never reached the server (the connection was never made):
    nothing was applied. The transport does not resend it; the caller re-checks, then may."""


class ThrottledError(ApiError):
    """A non-idempotent call answered 429: the server did not act on it. The transport does
    not resend it; the caller waits ``retry_after`` seconds (finite, at most the retry
    policy's bound; None: the server named no usable wait), re-checks, then may send again."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFoundError(ApiError):
    """The API answered ``status`` 404 for ``path`` (the object does not exist, any more,
    or the route does not), or 405 (the route does not exist for this method)."""

    def __init__(self, message: str, path: str, status: int = 404) -> None:
        super().__init__(message)
        self.path = path
        self.status = status


class UnavailableError(ApiError):
    """A read failed on every try of the retry policy (429, 500/502/503/504, a dropped
    connection, an unreadable body): the server has the endpoint and did not answer now. Never
    read as "the server lacks it" (a pull taking that for "no events API" finished on what
    it could not read)."""


class UnsupportedError(ApiError):
    """The server has no ``endpoint``: its ``version`` (None: it does not say) is older than
    ``needs``, the first release that has it."""

    def __init__(self, message: str, *, endpoint: str, version: str | None, needs: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.version = version
        self.needs = needs


class StoreError(FlowsyncError):
    exit_code = 5


class StoreLockedError(StoreError):
    """``holder_role``: pull, apply, plan (``plan --refresh``), reader, notebook or unknown;
    ``holder_pid`` when known; ``brief``: the holder reads the live file for a moment
    (``status``, a report's last-pull time), so a writer waits a little for it."""

    exit_code = 6

    def __init__(
        self,
        message: str,
        *,
        holder_pid: int | None = None,
        holder_role: str = "unknown",
        brief: bool = False,
    ) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid
        self.holder_role = holder_role
        self.brief = brief


class NewerFileError(StoreError):
    """The file holds migrations this flowsync does not know: a newer version wrote it.

    ``written_by`` is that version (empty when the file does not say), ``ours``
    this one, ``unknown`` the migrations it does not know. Writing would lose
    what the newer version keeps (its columns, its tables), so only reads are allowed.
    """

    def __init__(
        self, message: str, *, path: str, written_by: str, ours: str, unknown: list[str]
    ) -> None:
        super().__init__(message)
        self.path = path
        self.written_by = written_by
        self.ours = ours
        self.unknown = unknown


class StorageError(StoreError):
    """The filesystem refused a read or write of ``path``: ``reason`` is ``full``,
    ``read-only``, ``permission`` or ``io``; ``detail`` is DuckDB's or the OS's words."""

    def __init__(self, message: str, *, path: str, reason: str, detail: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.detail = detail


class OlderSchemaError(StoreError):
    """``path`` (the live file or a snapshot) has migrations this flowsync would apply:
    only a writer (the next pull) upgrades it."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class DamagedFileError(StoreError):
    """``path`` (the live file or a snapshot) is truncated or corrupt; the message names
    the remedy (restore the last snapshot, or re-pull; for a snapshot, the next pull)."""

    def __init__(self, message: str, *, path: str, detail: str) -> None:
        super().__init__(message)
        self.path = path
        self.detail = detail


class QueryError(StoreError):
    """A statement DuckDB refused or failed: raised only by the store's query path.

    ``detail`` is DuckDB's first line (``Binder Error: ...``), ``kind`` its error
    class (``BinderException``), ``sql`` the statement, ``hint`` the rest of DuckDB's
    message: its suggestions (``Did you mean "flow_runs"?``, candidate columns, a
    macro's parameters) and the ``LINE 1: ...`` pointer. ``str()`` is
    ``Query failed: <detail>``.
    """

    def __init__(self, detail: str, *, sql: str, kind: str, hint: str = "") -> None:
        super().__init__(f"Query failed: {detail}", hint=hint)
        self.detail = detail
        self.sql = sql
        self.kind = kind


class ReadOnlyError(QueryError):
    """The statement would change a file opened read-only (``path``)."""

    def __init__(self, detail: str, *, sql: str, kind: str, path: str, hint: str = "") -> None:
        super().__init__(detail, sql=sql, kind=kind, hint=hint)
        self.path = path


class SandboxError(QueryError):
    """A query on a sandboxed store tried to read a file, the network or an extension."""


class QueryTimeoutError(QueryError):
    """The statement ran longer than the ``seconds`` it was given and was interrupted."""

    def __init__(self, detail: str, *, sql: str, kind: str, seconds: float) -> None:
        super().__init__(detail, sql=sql, kind=kind)
        self.seconds = seconds


class PolicyError(FlowsyncError):
    """A policy file or rule refused; ``hint``: one line per invalid field, when several."""

    exit_code = 7


class PolicyLimitError(PolicyError):
    exit_code = 8


class FlowsyncWarning(UserWarning):
    """A condition a command goes on with (``NewerFileWarning``); ``str()`` is one line."""


class NewerFileWarning(FlowsyncWarning):
    """A file written by a newer flowsync is being read (read-only) by this one."""


class PartialFileWarning(FlowsyncWarning):
    """A file whose first pull stopped before it finished is being read: part of the runs."""


class SignalInterrupt(KeyboardInterrupt):
    """SIGTERM (systemd, Kubernetes) handled like Ctrl-C: ``signal_name``, ``exit_code``."""

    def __init__(self, signum: int, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signum = signum
        self.signal_name = signal_name
        self.exit_code = 128 + signum


PARTIAL_FAILURE_EXIT = 9
INTERRUPTED_EXIT = 130
