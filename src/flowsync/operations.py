"""What each command does, as one call: the library the CLI, recipes and notebooks share.

Owns: the whole sequence behind ``flowsync plan``, ``flowsync apply`` and
``flowsync report NAME`` (which
file to open and how — snapshot or live, read-only or writer, sandboxed, memory
capped —, the re-read of ``plan --refresh``, the confirmation hook, publishing
the readers' snapshot after an apply; a report's options checked against its
declaration in ``flowsync.registry``), so a Python caller gets exactly what the
command does. ``flowsync.plan``, ``flowsync.apply`` and ``flowsync.report`` are
these functions.
Must not: print or parse arguments (the CLI renders what they return), or hold
the API key anywhere but the client's header.

    pull(db, *, api, options=None, progress=None, wait=0.0) -> Pulled
    export(db, dest, *, fmt="parquet", tables=None, since=None, live=False) -> Exported
    plan(db, policy, *, refresh=None, live=False, wait=0.0, timeout=None) -> Plan
    apply(db, policy, *, api, confirm=None, progress=None, ...) -> Applied
    report(db, name, *, since=None, by=None, flow=(), ..., **options) -> Reported

Errors: ``PolicyError`` (exit 7: the file or a rule; ``PolicyLimitError``, exit 8:
over max_actions), ``ApiError``/``AuthError`` (3/4), ``StoreError`` (5),
``StoreLockedError`` (6), ``ConfigError`` (2: an unknown report, grouping, option or
filter name, or a value its flag refuses); see ``flowsync.errors``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowsync import api as http  # looked up per call: tests swap the client class
from flowsync import export as export_tables
from flowsync import objectstore, present, registry, reports, views
from flowsync.config import (
    SETTLE_MIN_SECONDS,
    ApiSettings,
    check_memory_limit,
    check_number,
    resolve_db_path,
)
from flowsync.errors import ApiError, ConfigError, FlowsyncError, StoreError, StoreLockedError
from flowsync.policy import (
    ApplyResult,
    LoadedPolicy,
    Plan,
    apply_plan,
    check_rules,
    load_policy,
    make_plan,
)
from flowsync.policy.apply import (
    SETTLE_SECONDS,
    check_guards,
    new_result,
    reread_runs,
)
from flowsync.policy.model import check_rule_timeout
from flowsync.policy.plan import PLAN_MEMORY_MB, selected_ids
from flowsync.policy.reread import catches_up
from flowsync.policy.result import KNOWN_OUTCOMES
from flowsync.progress import Progress
from flowsync.since import check_start, parse_since
from flowsync.store import Store, Writer, audit, locks, snapshot, sync_log
from flowsync.store.snapshot import PublishResult, SnapshotInfo, publish
from flowsync.sync import PullOptions, PullResult
from flowsync.sync import pull as pull_runs

if TYPE_CHECKING:
    import polars as pl

    from flowsync.health import Health

__all__ = [
    "Applied",
    "Exported",
    "Pulled",
    "Reported",
    "apply",
    "export",
    "plan",
    "pull",
    "report",
]


def _check_hooks(progress: object = None, on_retry: object = None) -> None:
    """A ``progress`` that is a ``Progress`` (phase, advance, message) and an ``on_retry`` that
    is a function, or None; else a ``ConfigError`` before anything is read or written (a
    number for ``progress`` raised AttributeError once the pull had begun)."""
    if progress is not None and not all(
        callable(getattr(progress, m, None)) for m in ("phase", "advance", "message")
    ):
        raise ConfigError(
            f"progress is {type(progress).__name__} {progress!r}, not a Progress (with phase, "
            "advance and message): pass one, e.g. flowsync.progress.NullProgress()."
        )
    if on_retry is not None and not callable(on_retry):
        raise ConfigError(
            f"on_retry is not a function ({type(on_retry).__name__} {on_retry!r}): pass one."
        )


def _check_api(name: str, api: object) -> ApiSettings:
    """``api`` (or ``refresh``) if it is an ``ApiSettings``; else a ``ConfigError`` before
    anything is read or written (a URL passed as text raised AttributeError mid-call, and an
    apply with nothing to do never looked). Names the type only: the value may be a key."""
    if not isinstance(api, ApiSettings):
        article = "an" if type(api).__name__[:1].lower() in "aeiou" else "a"
        raise ConfigError(
            f"{name} is {article} {type(api).__name__}, not an ApiSettings: pass "
            f"{name}=flowsync.config.resolve_api(url, key), or ApiSettings(url=...)."
        )
    return api


@dataclass
class Pulled:
    """A pull's result, and the snapshot readers now see (published, or kept unchanged)."""

    result: PullResult
    snapshot: PublishResult


def pull(
    db: str | os.PathLike[str],
    *,
    api: ApiSettings,
    options: PullOptions | None = None,
    progress: Progress | None = None,
    wait: float = 0.0,
    on_retry: Callable[[str], None] | None = None,
) -> Pulled:
    """Bring ``db`` up to date with the API, then publish the snapshot readers open.

    Creates and upgrades the file, holds its write lock (``wait`` seconds for
    it), refuses another server's file, caps DuckDB's memory, records the pull
    in ``sync_runs``; a pull that changed nothing keeps the current snapshot. A first
    pull checks the file's place, then the server, before it makes the file: a wrong
    path or URL leaves nothing behind."""
    api = _check_api("api", api)
    _check_hooks(progress, on_retry)
    if options is not None and not isinstance(options, PullOptions):
        raise ConfigError(
            f"options is a {type(options).__name__}, not a PullOptions: pass "
            "options=flowsync.sync.PullOptions(...)."
        )
    db = resolve_db_path(db)  # `~` expanded, as --db and flowsync.connect() do
    with http.PrefectClient(api, on_retry=on_retry) as client:
        if not Store.exists(db):
            Store.check_writable(db)
            client.check()
            # Prefect answers /health without the credentials it demands elsewhere: a read
            # that needs them, so a wrong key or auth string (401) leaves no file either.
            client.count("flows")
        with Store.writer(db, wait=wait) as store:
            try:
                result = pull_runs(client, store, options, progress)
            except (KeyboardInterrupt, ApiError):  # (another server's file: nothing written)
                _publish_stopped_first_pull(store)
                raise
            try:
                return Pulled(
                    result, publish(store, pull_id=result.pull_id, changed=result.changed)
                )
            except FlowsyncError as e:
                # Its rows are saved, but readers do not see them: not a pull that went well.
                why = f"the pull's rows are saved, but no snapshot was published: {e}"
                with contextlib.suppress(Exception), store.transaction():
                    sync_log.finish_sync_run(
                        store, result.pull_id, status="failed", error=why[:2000]
                    )
                raise


def _publish_stopped_first_pull(store: Writer) -> None:
    """A first pull that stops (Ctrl-C, SIGTERM, a failing server) publishes what it pulled:
    readers open that snapshot, warned that it is partial, instead of the live file, where a
    notebook's connection would block the pull that finishes it; a second stop publishes
    again, what it has then. (A kill -9 publishes nothing: readers fall back to the live
    file, or the last stop's snapshot.) A file some pull finished keeps that pull's snapshot:
    a later pull that stops is not published (its readers keep a whole one)."""
    with contextlib.suppress(Exception):
        if store.execute("SELECT count(*) FROM flow_runs").scalar() and not (
            sync_log.last_pull_at(store)
        ):
            publish(store, by="a first pull that stopped part-way")


def plan(
    db: str | os.PathLike[str],
    policy: Path,
    *,
    refresh: ApiSettings | None = None,
    live: bool = False,
    wait: float = 0.0,
    timeout: float | None = None,
    lock_context: str | None = None,
    progress: Progress | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> Plan:
    """What ``policy`` would do to the runs in ``db``; changes nothing on the server.

    Reads the latest published snapshot (``live``: the live file). With
    ``refresh`` (the API to read from) every run the rules select is first
    re-read from the server into the live file, and the plan is made on it. Rule
    SQL always runs on a read-only, sandboxed connection, stopped after ``timeout``
    seconds (0.1 to 3600, as ``--rule-timeout``; None: the policy's
    ``rule_timeout_seconds``; else a ``ConfigError``). ``lock_context`` says how
    a lock on the live file is explained (``store.locks``); ``progress`` counts the
    runs a refresh reads; ``on_retry`` hears, a line each, when a refresh's request is
    retried and when the request budget, not the server, holds it back (as pull's)."""
    timeout = check_rule_timeout(timeout)
    _check_hooks(progress, on_retry)
    if refresh is not None:
        refresh = _check_api("refresh", refresh)
    loaded = load_policy(policy)
    db = resolve_db_path(db)  # `~` expanded, as --db and flowsync.connect() do
    if refresh is not None:
        if Store.exists(db):
            Store.check_writable(db)  # a newer flowsync's file: refused before it is read
        # Which runs to re-read, from the live file opened read-only; the re-read on a
        # writable connection that runs no rule SQL; the plan read-only again.
        with (
            Store.sandboxed(
                db,
                live=True,
                wait=wait,
                lock_context=locks.WRITE,
                memory_limit_mb=PLAN_MEMORY_MB,
            ) as store,
            make_plan(store, loaded) as selecting,
        ):
            ids = selected_ids(selecting)
            lookups = frozenset().union(*selecting.reads_lookups.values())
            catch_up = catches_up(loaded.policy.rules, selecting.reads_other_runs)
        with (
            Store.writer(db, wait=wait, lock_context=locks.WRITE) as writer,
            http.PrefectClient(refresh, on_retry=on_retry) as client,
        ):
            reread_runs(client, writer, ids, lookups, catch_up, progress)
            publish(writer)  # readers see the runs the refresh re-read
        with Store.sandboxed(
            db, live=True, wait=wait, lock_context=locks.WRITE, memory_limit_mb=PLAN_MEMORY_MB
        ) as store:
            made = make_plan(store, loaded, timeout=timeout)
        made.refreshed = len(ids)
        return made
    # `plan` reads the published snapshot (what the last pull or apply left); `apply`
    # decides on the live file, which equals that snapshot unless a pull is running.
    with Store.sandboxed(
        db, live=live, wait=wait, lock_context=lock_context, memory_limit_mb=PLAN_MEMORY_MB
    ) as store:
        return make_plan(store, loaded, timeout=timeout)


def check_policy(
    policy: Path, db: str | os.PathLike[str] | None = None, *, wait: float = 0.0
) -> tuple[LoadedPolicy, dict[str, int] | None]:
    """Validate a policy file and every rule's SQL, read-only and sandboxed as plan runs it:
    over ``db`` (then rule name -> ids it returns), or without one over an empty file of
    this flowsync's schema and views (a typo, a write, a function not allowed or a missing
    ``id`` column fails the same way; None). ``PolicyError`` on the first problem."""
    loaded = load_policy(policy)
    if db is not None:
        with Store.sandboxed(resolve_db_path(db), wait=wait) as store:
            return loaded, check_rules(store, loaded)
    with tempfile.TemporaryDirectory(prefix="flowsync-check-") as folder:
        empty = Path(folder) / "empty.duckdb"
        empty.write_bytes(_empty_file())
        with Store.sandboxed(empty, live=True) as store:
            check_rules(store, loaded)
    return loaded, None


@functools.cache
def _empty_file() -> bytes:
    """An empty file of this flowsync's schema and views, built once a process (0.4 s: the
    views) and copied for each check: a caller checking many policies pays it once."""
    with tempfile.TemporaryDirectory(prefix="flowsync-check-") as folder:
        empty = Path(folder) / "empty.duckdb"
        with Store.writer(empty) as writer:
            views.ensure_built(writer)
        return empty.read_bytes()  # closed and checkpointed: the whole file, no WAL


@dataclass
class Applied:
    """What an apply did: the plan it confirmed, its result (None: nothing to do, or not
    confirmed; with an empty plan, the earlier applies' runs it read back and settled), and
    an error publishing the readers' snapshot after the calls."""

    plan: Plan
    result: ApplyResult | None
    confirmed: bool
    publish_error: FlowsyncError | None = None


@contextlib.contextmanager
def _closed_if_raised(made: Plan) -> Iterator[Plan]:
    """``made``, closed (its scratch file removed) when the block raises: the error may live
    on (a traceback, a task state), the scratch file need not."""
    try:
        yield made
    except BaseException:
        made.close()
        raise


def apply(
    db: str | os.PathLike[str],
    policy: Path,
    *,
    api: ApiSettings,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Progress | None = None,
    wait: float = 0.0,
    memory_limit_mb: int | None = None,
    timeout: float | None = None,
    result: ApplyResult | None = None,
    on_retry: Callable[[str], None] | None = None,
    settle_seconds: float = SETTLE_SECONDS,
) -> Applied:
    """Plan ``policy`` on the live file, ask ``confirm`` (None: yes), apply it, publish.

    Every batch is re-read and re-decided right before its call (see
    ``flowsync.policy.apply``); DuckDB's memory is capped like a pull's. Pass
    ``result`` (``ApplyResult.new()``) to keep what was done when this raises:
    the outcomes are in it and in ``policy_actions`` whatever stops the apply. A refused
    or failed apply closes its plan (its scratch file); a returned one is the caller's."""
    api = _check_api("api", api)
    _check_hooks(progress, on_retry)
    if confirm is not None and not callable(confirm):
        raise ConfigError(
            f"confirm is not a function ({type(confirm).__name__} {confirm!r}): pass one."
        )
    db = resolve_db_path(db)  # `~` expanded, as --db and flowsync.connect() do
    memory_limit_mb = check_memory_limit(memory_limit_mb)
    check_number("--settle-seconds", settle_seconds, low=SETTLE_MIN_SECONDS, metavar="SECONDS")
    if Store.exists(db):
        Store.check_writable(db)  # a newer flowsync's file: refused before it is read
    # apply has no --live: it always decides on the live file
    made = plan(db, policy, live=True, wait=wait, timeout=timeout, lock_context=locks.LIVE_ONLY)
    with _closed_if_raised(made):  # a refused or failed apply: its scratch file goes
        if made.total == 0:
            # Nothing to send; an earlier apply's calls with no recorded answer are still read
            # back and settled, as any apply does first (reads only: nothing to confirm).
            with Store.reader(db, live=True, wait=wait, lock_context=locks.LIVE_ONLY) as reading:
                earlier = audit.unresolved(reading, known=KNOWN_OUTCOMES)
            if not earlier:
                return Applied(made, None, confirmed=False)
        else:
            check_guards(made)
            Store.check_writable(db)  # a newer flowsync's file: refused before the question
            if confirm is not None and not confirm(made):
                return Applied(made, None, confirmed=False)
        held = result or new_result(made)
        held.policy_sha256 = made.policy.sha256
        # Capped like a pull: uncapped, DuckDB kept every block the batches' writes touched
        # (977 MB for 10,000 deletes at a million runs).
        with (
            Store.sandboxed_writer(db, wait=wait, memory_limit_mb=memory_limit_mb) as store,
            http.PrefectClient(api, on_retry=on_retry) as client,
            store.memory_guard(),
        ):
            apply_plan(
                client, store, made, progress=progress, result=held, settle_seconds=settle_seconds
            )
            try:
                publish(store)  # readers (and the next `plan`) see what apply changed
            except FlowsyncError as e:
                # The calls are done and audited: the caller shows the summary, then this.
                return Applied(made, held, confirmed=made.total > 0, publish_error=e)
        return Applied(made, held, confirmed=made.total > 0)


@dataclass(frozen=True)
class Status:
    """What ``flowsync status`` shows: ``summary`` (its ``--json``: source API, server, last
    pull and apply, row counts, the snapshot), the snapshot readers see, and who writes the
    file now (a ``StoreLockedError`` naming them; None when nobody does)."""

    path: Path
    summary: dict[str, Any]
    snapshot: SnapshotInfo | None
    snapshot_problem: str
    writing: StoreLockedError | None

    def to_json(self) -> dict[str, Any]:
        return self.summary


def status(db: str | os.PathLike[str] | None = None, *, wait: float = 0.0) -> Status:
    """``flowsync status``: the live file's summary; while a pull or apply writes it, the
    published snapshot's, saying who writes (``StoreLockedError`` when no sound snapshot
    can be read either). A damaged snapshot is reported, not raised."""
    path = resolve_db_path(db)
    writing: StoreLockedError | None = None
    try:
        with Store.reader(path, live=True, wait=wait, lock_context=locks.LIVE_ONLY) as store:
            # No writer holds the live file (else it would not open).
            summary = sync_log.status_summary(store, none_running=True)
    except StoreLockedError as e:
        info, problem = snapshot.inspect(path)
        if info is None or problem:
            raise
        writing = e
        try:
            with Store.reader(path) as store:
                summary = sync_log.status_summary(store)
        except StoreError:
            raise e from None
    published, problem = snapshot.inspect(path)
    summary["db"] = str(path)
    summary["writing_now"] = (
        {"role": writing.holder_role, "pid": writing.holder_pid} if writing else None
    )
    summary["snapshot"] = published.to_json() if published else None
    summary["snapshot_problem"] = problem or None
    return Status(path, summary, published, problem, writing)


@dataclass
class Exported:
    """What an export wrote, and for an object-store destination what it uploaded."""

    result: export_tables.ExportResult
    uploaded: objectstore.UploadResult | None = None


def export(
    db: str | os.PathLike[str],
    dest: str | Path,
    *,
    fmt: str = "parquet",
    tables: list[str] | None = None,
    since: datetime | str | None = None,
    live: bool = False,
    wait: float = 0.0,
    replace: bool = False,
    progress: Progress | None = None,
) -> Exported:
    """The tables as Parquet partitioned by day under ``dest`` (a folder, or ``s3://``,
    ``gs://``, ``az://``), each partition replaced atomically, with a manifest; with
    ``since``, only the partitions changed since then. Reads the latest snapshot
    (``live``: the live file), so it never blocks a pull. A destination is checked
    before anything is written: an empty one, an unsupported URL, or one holding an
    export of another file or server (``replace``: take it over, a full export only)
    is a ``ConfigError``. ``since`` may be text, as ``--since`` takes it (``2d``).
    ``progress`` gets a phase per table (``export flow_runs``: rows) and, for a URL,
    ``upload`` (files)."""
    _check_hooks(progress)
    db = resolve_db_path(db)  # `~` expanded, as --db and flowsync.connect() do
    if isinstance(since, datetime):
        since = check_start(since, datetime.now(timezone.utc))
    elif since is not None:
        since = parse_since(since, datetime.now(timezone.utc))
    if isinstance(tables, str):  # iterated, it named a table a letter
        raise ConfigError(
            f"tables={tables!r} is one text, not a list of tables: pass tables=[{tables!r}]."
        )
    objectstore.check_destination(str(dest))
    remote = objectstore.is_remote(str(dest))
    out_dir = objectstore.local_dir(str(dest))
    request = export_tables.ExportRequest(
        fmt, export_tables.TABLES if tables is None else tuple(tables), since, replace
    )
    if not remote:
        export_tables.check_dir(out_dir, request)
    staged = objectstore.staging(str(dest)) if remote else contextlib.nullcontext(out_dir)
    with Store.reader(db, live=live, wait=wait) as store, staged as out_dir:
        source = export_tables.source_of(store, db)
        if remote and not replace:
            objectstore.check_remote(str(dest), source, since)
        result = export_tables.export(
            store, out_dir, request, source=source, progress=progress, wait=wait
        )
        uploaded = objectstore.upload(out_dir, result, str(dest), progress) if remote else None
    return Exported(result, uploaded)


@dataclass
class Reported:
    """A report's rows and what the command shows around them: its declaration (title,
    columns and their kinds), the window it covers, a warning when the data does not cover
    the previous window, the HTML page (``html=True``) and, for ``health``, its figures."""

    report: registry.Report
    title: str
    frame: pl.DataFrame
    window: reports.Window
    warning: str | None = None
    page: str | None = None
    health: Health | None = None


def _names(flag: str, values: str | Sequence[str] | None) -> tuple[str, ...]:
    """A filter's names: one, several, or None; anything else (a number, a list holding
    one) is a ``ConfigError`` naming ``flag``, as the command's own check would be."""
    if isinstance(values, str):
        return (values,)
    try:
        names = () if values is None else tuple(values)
    except TypeError:  # a number: no name, nor names
        names = (values,)  # type: ignore[assignment]
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(
            f"{flag} {values!r} is not a name or a list of names: pass text such as 'etl'."
        )
    return names


def _query_args(
    spec: registry.Report,
    window: reports.Window,
    by: str | None,
    include_deleted: bool,
    filters: reports.Filters,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The keyword arguments of ``spec.query``, each checked against the declaration."""
    args: dict[str, Any] = {}
    if spec.groupings:
        chosen = spec.default_by if by is None else by  # "" is no grouping, not the default
        if chosen not in spec.groupings:
            raise ConfigError(
                f"--by {chosen!r} is not a grouping of this report; "
                f"choose one of: {', '.join(spec.groupings)}."
            )
        args["by"] = chosen
    elif by is not None:
        raise ConfigError(f"report {spec.name} has no --by.")
    if spec.since is not None:
        args["window"] = window
    if spec.include_deleted:
        args["include_deleted"] = include_deleted
    elif include_deleted:
        raise ConfigError(f"report {spec.name} counts live runs only: no --include-deleted.")
    if spec.filters:
        args["filters"] = filters
    params = {p.name: p for p in spec.params}
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ConfigError(
            f"report {spec.name} has no option {unknown[0]!r}; "
            f"its options: {', '.join(params) or 'none'}."
        )
    for name, param in params.items():
        value = options.get(name, param.default)
        args[name] = (
            reports.parse_since(value, option=param.flag)
            if param.kind == "window"
            else param.check(value)
        )
    return args


def report(
    db: str | os.PathLike[str],
    name: str,
    *,
    since: datetime | str | None = None,
    by: str | None = None,
    include_deleted: bool = False,
    flow: str | Sequence[str] | None = None,
    deployment: str | Sequence[str] | None = None,
    tag: str | Sequence[str] | None = None,
    state: str | Sequence[str] | None = None,
    live: bool = False,
    wait: float = 0.0,
    html: bool = False,
    **options: Any,
) -> Reported:
    """The report ``name`` (``flowsync.registry.REPORTS``) over ``db``'s latest snapshot
    (``live``: the live file): ``since`` as ``--since`` (default: the report's),
    ``by`` as ``--by``, ``flow``/``deployment``/``tag``/``state`` as the filters, and the
    report's own options by name (``late_after=300``, ``last=10``, ``history="30d"``).
    With ``html``, also the health page with this report's table under it."""
    db = resolve_db_path(db)  # `~` expanded, as --db and flowsync.connect() do
    spec = registry.get(name)
    if spec.since is None and since is not None and spec.no_since:
        raise ConfigError(spec.no_since.format(since=since))
    filters = reports.Filters(
        _names("--flow", flow),
        _names("--deployment", deployment),
        _names("--tag", tag),
        _names("--state", state),
    )
    offered = {"flow": filters.flows, "deployment": filters.deployments}
    offered |= {"tag": filters.tags, "state": filters.states}
    extra = [f for f, values in offered.items() if values and f not in spec.filters]
    if extra:
        raise ConfigError(
            f"report {spec.name} has no --{extra[0]} filter; "
            f"it takes: {', '.join('--' + f for f in spec.filters) or 'none'}."
        )
    if spec.query is None:
        return _health(db, spec, since, by, include_deleted, live, wait, html, options)
    window = reports.parse_since(since if since is not None else spec.since)
    args = _query_args(spec, window, by, include_deleted, filters, options)
    title = spec.heading(args.get("by"))
    with Store.reader(db, live=live, wait=wait) as store:
        frame = spec.query(store, **args)
        start = None
        if spec.compares and window.since is not None:
            start = reports.history_start(store, include_deleted=include_deleted)
        page = None
        if html:
            from flowsync import report_html

            page = report_html.build_page(
                store, window, title, frame, include_deleted=include_deleted, report=spec.name
            )
    return Reported(spec, title, frame, window, _uncovered(window, start), page)


def _uncovered(window: reports.Window, data_start: datetime | None) -> str | None:
    """What to say when the previous window begins well before the data does."""
    gap = reports.previous_uncovered(window, data_start)
    if gap is None or data_start is None:
        return None
    length = (window.until - window.start).total_seconds()
    return present.uncovered_note(length, gap.total_seconds(), data_start)


def _health(
    db: Path,
    spec: registry.Report,
    since: datetime | str | None,
    by: str | None,
    include_deleted: bool,
    live: bool,
    wait: float,
    html: bool,
    options: dict[str, Any],
) -> Reported:
    from flowsync import health, report_html

    window = reports.parse_since(since if since is not None else spec.since)
    args = _query_args(spec, window, by, include_deleted, reports.Filters(), options)
    with Store.reader(db, live=live, wait=wait) as store:
        figures = health.collect(
            store,
            window,
            include_deleted=include_deleted,
            late_after=args["late_after"],
            live_db=None if live else db,
        )
    return Reported(
        spec,
        spec.title,
        health.headline_frame(figures),
        window,
        _uncovered(window, figures.history_start),
        report_html.render_health(figures) if html else None,
        figures,
    )
