"""Reports: pure functions from the DuckDB file to Polars frames.

Owns: choosing which view or table macro of ``sql/`` answers each report,
with which window (``--since``) and grouping (``--by``). Every figure is
defined once, in those SQL files; nothing here computes one. The definition of
failure they all use:

    failed       = FAILED or CRASHED
    finished     = COMPLETED, FAILED or CRASHED   (the ``runs`` column)
    failure_rate = failed / finished               (NULL when nothing finished)
    cancelled    = CANCELLED, reported apart and never a failure

Live figures leave out runs deleted on the server; ``include_deleted=True``
gives history (every run the file has seen). A notebook imports these
functions as they are; the CLI only renders what they return. Must not:
print, import duckdb/typer/rich, write to the file, or aggregate in SQL or
Polars. Values go into SQL as parameters; only names from the fixed tables
below (macros, groupings, columns) are formatted in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from flowsync.errors import ConfigError, ReadOnlyError, StoreError
from flowsync.since import parse_since as since_time
from flowsync.states import FAILED_STATES, STATE_TYPES

if TYPE_CHECKING:  # imported lazily: the CLI reads GROUPS without loading Polars or DuckDB
    import polars as pl

    from flowsync.store import Store


@dataclass(frozen=True)
class Grouping:
    """A --by choice: the group columns a report shows, out of the ones every
    grouped macro in ``sql/`` returns (``GROUP_COLUMNS``; see 12_grouped_runs.sql)."""

    columns: tuple[str, ...]


GROUPS: dict[str, Grouping] = {
    "flow": Grouping(("flow_id", "flow_name")),
    "deployment": Grouping(("deployment_id", "flow_name", "deployment_name")),
    "work_pool": Grouping(("work_pool_name",)),
    "tag": Grouping(("tag",)),
}
DURATION_GROUPS = ("flow", "deployment", "work_pool", "tag")
# Groupings used inside flowsync (the health page, OpenMetrics), not offered as --by.
INTERNAL_GROUPS: dict[str, Grouping] = {
    "all": Grouping(()),
    "day": Grouping(("run_day",)),
    "hour": Grouping(("run_hour",)),
    "day_deployment": Grouping(("run_day", "deployment_id", "flow_name", "deployment_name")),
}
GROUP_COLUMNS = (
    "run_day",
    "run_hour",
    "flow_id",
    "flow_name",
    "deployment_id",
    "deployment_name",
    "work_pool_name",
    "tag",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Window:
    """Runs whose ``run_at`` is in [since, until); ``since=None`` means all history."""

    since: datetime | None
    until: datetime

    @property
    def start(self) -> datetime:
        return self.since if self.since is not None else _EPOCH

    @property
    def previous_start(self) -> datetime:
        """Start of the previous window of the same length (ends where this one starts)."""
        if self.since is None:
            return _EPOCH
        return self.since - (self.until - self.since)

    def describe(self) -> str:
        if self.since is None:
            return f"all runs before {self.until:%Y-%m-%d %H:%M} UTC"
        return f"{self.since:%Y-%m-%d %H:%M} to {self.until:%Y-%m-%d %H:%M} UTC"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_since(text: str | None, now: datetime | None = None) -> Window:
    """``7d``, ``12h``, ``30m``, ``2w``, a date ``2026-01-01``, an ISO time, or ``all``
    (``flowsync.since.parse_since``, which export uses too), as a window ending now."""
    now = now or utcnow()
    return Window(since_time(text, now), now)


@dataclass(frozen=True)
class Filters:
    """Which runs a report counts (``--flow``, ``--deployment``, ``--tag``, ``--state``);
    empty means all. Deployments are ``flow/deployment`` or a deployment name."""

    flows: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    states: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.flows or self.deployments or self.tags or self.states)


def _filter_params(store: Store, filters: Filters | None) -> dict[str, Any]:
    """The ``only_*`` parameters of the macros (see ``sql/06_run_selected.sql``): names
    resolved to ids, each name checked so a typo is an error, not an empty report."""
    f = filters or Filters()
    params: dict[str, Any] = {
        "only_flows": None,
        "only_deployments": None,
        "only_tags": list(f.tags) or None,
        "only_states": None,
    }
    if f.flows:
        rows = store.execute(
            "SELECT name, CAST(id AS VARCHAR) FROM flows WHERE list_contains($names, name)",
            {"names": list(f.flows)},
        ).rows()
        found = _ids_by_name(rows)
        _unknown("--flow", [n for n in f.flows if n not in found], "SELECT name FROM flows")
        params["only_flows"] = [i for ids in found.values() for i in ids]
    if f.deployments:
        rows = store.execute(
            """
            SELECT n.name, CAST(d.id AS VARCHAR)
            FROM unnest($names) AS n(name)
            JOIN deployments AS d ON d.name = n.name
                OR (SELECT f.name FROM flows AS f WHERE f.id = d.flow_id) || '/' || d.name = n.name
            """,
            {"names": list(f.deployments)},
        ).rows()
        found = _ids_by_name(rows)
        _unknown(
            "--deployment",
            [n for n in f.deployments if n not in found],
            "SELECT flow_name || '/' || deployment_name FROM failure_rates_by_deployment",
        )
        params["only_deployments"] = [i for ids in found.values() for i in ids]
    if f.states:
        states = [s.upper() for s in f.states]
        bad = [s for s in states if s not in STATE_TYPES]
        if bad:
            raise ConfigError(
                f"--state {bad[0]!r} is not a Prefect state type; choose from: {', '.join(STATE_TYPES)}."
            )
        params["only_states"] = states
    return params


def _ids_by_name(rows: list[tuple[Any, ...]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, id_ in rows:
        found.setdefault(name, []).append(id_)
    return found


def _unknown(option: str, names: list[str], sql: str) -> None:
    if names:
        raise ConfigError(
            f'{option} {names[0]!r}: no such name in the file; list them with flowsync sql "{sql}".'
        )


_ONLY = (
    "only_flows := $only_flows, only_deployments := $only_deployments, "
    "only_tags := $only_tags, only_states := $only_states"
)


def _check_by(by: str, allowed: tuple[str, ...]) -> Grouping:
    """``by`` as a grouping: one of ``allowed`` (the --by choices), or one of the
    groupings the health figures use (``all``: one row over everything)."""
    if by in INTERNAL_GROUPS:
        return INTERNAL_GROUPS[by]
    if by not in allowed:
        raise ConfigError(
            f"--by {by!r} is not a grouping of this report; choose one of: {', '.join(allowed)}."
        )
    return GROUPS[by]


def _grouped(macro: str, by: str, args: str, order: str) -> str:
    """SELECT from a grouped table macro of ``sql/``, showing ``by``'s group columns.

    ``by`` goes in as a literal, not a parameter: it is one of the fixed names
    above (checked by the caller), and a constant lets DuckDB fold the grouping
    and drop the branch of grouped_runs that does not apply (the tag unnest)."""
    grouping = GROUPS.get(by) or INTERNAL_GROUPS[by]
    keep = grouping.columns
    shown = ", ".join((*keep, f"* EXCLUDE ({', '.join(GROUP_COLUMNS)})"))
    tie = f", {keep[0]}" if keep else ""
    return f"SELECT {shown} FROM {macro}('{by}', {args}) ORDER BY {order}{tie}"


def _by_group(
    store: Store,
    macro: str,
    by: str,
    allowed: tuple[str, ...],
    args: str,
    params: dict[str, Any],
    order: str,
    filters: Filters | None,
) -> pl.DataFrame:
    """A grouped table macro's rows per ``by`` (one of ``allowed``), called with ``args``
    (``params``) and the runs ``filters`` select, ordered by ``order``."""
    _check_by(by, allowed)
    sql = _grouped(macro, by, f"{args}, {_ONLY}", order)
    return run_sql(store, sql, {**params, **_filter_params(store, filters)})


def _window(window: Window, include_deleted: bool) -> dict[str, Any]:
    """The parameters every windowed macro takes: $since, $until, $include_deleted."""
    return {"since": window.start, "until": window.until, "include_deleted": include_deleted}


def _params(window: Window, include_deleted: bool, *, previous: bool = True) -> dict[str, Any]:
    """``_window`` and $prev_start (the previous window; with ``previous=False`` none)."""
    prev_start = window.previous_start if previous else window.start
    return {**_window(window, include_deleted), "prev_start": prev_start}


def _no_previous(frame: pl.DataFrame, window: Window, columns: tuple[str, ...]) -> pl.DataFrame:
    """All history has no previous window: its columns are NULL, not zero."""
    if window.since is not None:
        return frame
    import polars as pl

    present = [c for c in columns if c in frame.columns]
    return frame.with_columns(pl.lit(None, dtype=frame.schema[c]).alias(c) for c in present)


# -- running SQL ---------------------------------------------------------------


def run_sql(
    store: Store, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> pl.DataFrame:
    """One statement through the store, as a Polars frame; a refused write says why."""
    try:
        return store.frame(sql, params)
    except ReadOnlyError as e:
        raise _refused(e) from e


def _refused(e: ReadOnlyError) -> StoreError:
    return StoreError(
        f"{e.path} is open read-only, so statements that change it are refused "
        f"({e.detail}). Use SELECT to read; "
        "the file is changed only by flowsync pull and policy apply."
    )


@dataclass(frozen=True)
class SqlResult:
    """The rows of an ad-hoc query and DuckDB's type of each column (``JSON``, ``INTERVAL``...),
    which the frame alone no longer tells (a JSON column is a Polars string)."""

    frame: pl.DataFrame
    types: tuple[str, ...]

    @property
    def json_columns(self) -> tuple[str, ...]:
        return tuple(name for name, t in zip(self.frame.columns, self.types) if t == "JSON")


def sql_result(store: Store, sql: str) -> SqlResult:
    """An ad-hoc query (``flowsync sql``): one or more statements, the last one's rows.

    Every DuckDB type comes back as a value Polars holds (intervals, unions and the like
    as DuckDB's own text; see ``Store.typed_frame``)."""
    if not sql.strip():
        raise ConfigError('No SQL given: pass a query such as "SELECT count(*) FROM flow_runs".')
    try:
        frame, types = store.typed_frame(sql)
    except ReadOnlyError as e:
        raise _refused(e) from e
    return SqlResult(frame, tuple(types))


def sql_query(store: Store, sql: str) -> pl.DataFrame:
    """``sql_result``'s rows."""
    return sql_result(store, sql).frame


# What a file holds, for `flowsync sql --tables`: the catalog, not a figure.
_CATALOG = """
    WITH cols AS (
        SELECT database_name, schema_name, table_name,
            list(column_name || ' ' || data_type ORDER BY column_index) AS columns
        FROM duckdb_columns() WHERE NOT internal GROUP BY ALL
    )
    SELECT kind, name, columns FROM (
        SELECT 'table' AS kind, table_name AS name, cols.columns
        FROM duckdb_tables() JOIN cols USING (database_name, schema_name, table_name)
        WHERE NOT internal AND database_name = current_database() AND schema_name = 'main'
        UNION ALL
        SELECT 'view', v.view_name, cols.columns
        FROM duckdb_views() AS v JOIN cols ON cols.database_name = v.database_name
            AND cols.schema_name = v.schema_name AND cols.table_name = v.view_name
        WHERE NOT v.internal AND v.database_name = current_database() AND v.schema_name = 'main'
        UNION ALL
        SELECT CASE function_type WHEN 'table_macro' THEN 'table macro' ELSE 'macro' END,
            function_name, parameters
        FROM duckdb_functions()
        WHERE function_type IN ('macro', 'table_macro') AND NOT internal
            AND database_name = current_database() AND schema_name = 'main'
    )
    ORDER BY CASE kind WHEN 'table' THEN 1 WHEN 'view' THEN 2 WHEN 'table macro' THEN 3 ELSE 4 END,
        name
"""


def tables(store: Store) -> pl.DataFrame:
    """Every table, view and macro of the file: its kind, name, and its columns with their
    types (for a macro: its parameters), as ``flowsync sql --tables`` lists them."""
    return run_sql(store, _CATALOG)


# -- reports --------------------------------------------------------------------


def failures(
    store: Store,
    by: str = "deployment",
    window: Window | None = None,
    *,
    include_deleted: bool = False,
    filters: Filters | None = None,
) -> pl.DataFrame:
    """One row per group: runs (finished), failed, failure_rate, cancelled, and the same for
    the previous window of equal length, with ``failure_rate_change`` (this - previous).
    The figures are the ``failure_rates`` macro of ``sql/13_failure_rates.sql``."""
    window = window or parse_since(None)
    frame = _by_group(
        store,
        "failure_rates",
        by,
        tuple(GROUPS),
        "$since, $until, $prev_start, $include_deleted",
        _params(window, include_deleted),
        "failed DESC, failure_rate DESC NULLS LAST, runs DESC",
        filters,
    )
    return _no_previous(frame, window, PREVIOUS_FAILURE_COLUMNS)


PREVIOUS_FAILURE_COLUMNS = (
    "prev_runs",
    "prev_failed",
    "prev_failure_rate",
    "prev_cancelled",
    "failure_rate_change",
    "runs_change",
    "failed_change",
)
_TREND_COLUMNS = ("prev_runs", "prev_p50_s", "prev_p95_s", "p50_change_s", "p95_change_s")


def durations(
    store: Store,
    by: str = "deployment",
    window: Window | None = None,
    *,
    include_deleted: bool = False,
    trend: bool = False,
    filters: Filters | None = None,
) -> pl.DataFrame:
    """Duration percentiles (seconds, wall clock) of finished runs per group, slowest p95 first;
    with ``trend``, also the previous window's p50/p95 and ``p95_change_s``. The figures are
    the ``duration_percentiles`` macro of ``sql/14_duration_percentiles.sql``."""
    window = window or parse_since(None)
    frame = _by_group(
        store,
        "duration_percentiles",
        by,
        DURATION_GROUPS,
        "$since, $until, $prev_start, $include_deleted",
        _params(window, include_deleted, previous=trend),
        "p95_s DESC",
        filters,
    )
    if not trend:
        return frame.drop(_TREND_COLUMNS)
    return _no_previous(frame, window, _TREND_COLUMNS)


def late(
    store: Store,
    by: str = "deployment",
    window: Window | None = None,
    *,
    late_after: float = 60.0,
    include_deleted: bool = False,
    filters: Filters | None = None,
) -> pl.DataFrame:
    """Start lateness per group: runs that started, how many more than ``late_after`` s
    late, lateness percentiles, and ``waiting_now``: SCHEDULED/PENDING runs expected
    in the window that have not started yet (the ``lateness`` macro, ``sql/15_lateness.sql``)."""
    window = window or parse_since(None)
    return _by_group(
        store,
        "lateness",
        by,
        tuple(GROUPS),
        "$since, $until, $late_after, $include_deleted",
        {**_window(window, include_deleted), "late_after": late_after},
        "late_runs + waiting_now DESC, p95_lateness_s DESC NULLS LAST",
        filters,
    )


def flaky(
    store: Store,
    window: Window | None = None,
    *,
    last: int = 3,
    min_rate: float = 0.05,
    filters: Filters | None = None,
) -> pl.DataFrame:
    """Deployments that fail: failures and retries in the window, the current failing
    streak over all history (``broken`` when the last ``last`` finished runs all
    failed), and the mean time from a failure to the next success (``mttr_s``).
    ``flaky``: not broken, and it failed and recovered by itself at least twice at a
    failure rate of at least ``min_rate``, or at least ``min_rate`` of its runs needed
    a retry.
    Live runs only (the ``flaky_deployments`` macro, ``sql/55_flaky_deployments.sql``)."""
    if not 0 <= min_rate <= 1:
        raise ConfigError(f"--min-rate {min_rate} must be a share between 0 and 1 (0.05 is 5%).")
    if last < 1:
        raise ConfigError(
            f"--last {last} must be at least 1 (the number of latest runs that must all have failed)."
        )
    window = window or parse_since(None)
    sql = """
        SELECT * FROM flaky_deployments(
            $since, $until, $last, min_rate := $min_rate,
            only_flows := $only_flows, only_deployments := $only_deployments
        )
        ORDER BY broken DESC, flaky DESC, failing_streak DESC, failure_rate DESC NULLS LAST,
            deployment_id
    """
    only = _deployments_only(store, filters, "flaky")
    params = {
        "since": window.start,
        "until": window.until,
        "last": last,
        "min_rate": min_rate,
        **only,
    }
    return run_sql(store, sql, params)


def _deployments_only(store: Store, filters: Filters | None, report: str) -> dict[str, Any]:
    """$only_flows and $only_deployments of a per-deployment report (flaky, unresolved,
    stuck), which filters by flow and deployment only."""
    if filters and (filters.tags or filters.states):
        raise ConfigError(
            f"report {report} is per deployment: filter it with --flow or --deployment "
            "(--tag and --state select runs, for failures, durations, late and errors)."
        )
    only = _filter_params(store, filters)
    return {"only_flows": only["only_flows"], "only_deployments": only["only_deployments"]}


def errors(
    store: Store,
    window: Window | None = None,
    *,
    include_deleted: bool = False,
    filters: Filters | None = None,
) -> pl.DataFrame:
    """Error signatures: failed runs (FAILED or CRASHED) grouped by their normalised
    message, most runs first, with deployments and flows affected, first and last seen,
    the change against the previous window and an example run (the ``error_signatures``
    macro, ``sql/16_error_signatures.sql``)."""
    window = window or parse_since(None)
    sql = f"""
        SELECT * FROM error_signatures($since, $until, $prev_start, $include_deleted, {_ONLY})
        ORDER BY runs DESC, last_seen DESC, signature
    """
    frame = run_sql(
        store, sql, {**_params(window, include_deleted), **_filter_params(store, filters)}
    )
    return _no_previous(frame, window, ("prev_runs", "runs_change"))


def unresolved(store: Store, *, filters: Filters | None = None) -> pl.DataFrame:
    """Deployments whose latest finished run failed: since when, failures since the last
    success, and the latest failure's signature (the ``unresolved_failures`` view).
    Current state of live runs, so no window; longest failing first."""
    only = _deployments_only(store, filters, "unresolved")
    return run_sql(
        store,
        """
        SELECT u.* FROM unresolved_failures AS u
        LEFT JOIN deployments AS d ON d.id = u.deployment_id
        WHERE run_selected(d.flow_id, u.deployment_id, NULL, NULL,
            $only_flows, $only_deployments, NULL, NULL)
        ORDER BY failing_since, failures_since_success DESC, deployment_id
        """,
        only,
    )


def error_signature(store: Store, messages: list[str | None]) -> pl.DataFrame:
    """The normalised text and short hash of each message, as the views compute them
    (``sql/05_error_signature_text.sql``): to see how a message will be grouped."""
    sql = """
        SELECT m.message, error_signature_text(m.message) AS error_text,
            signature_of(error_signature_text(m.message)) AS signature
        FROM unnest($messages) WITH ORDINALITY AS m(message, i)
        ORDER BY i
    """
    return run_sql(store, sql, {"messages": messages})


def failure_rate_daily(
    store: Store,
    window: Window | None = None,
    *,
    by_deployment: bool = True,
    include_deleted: bool = False,
) -> pl.DataFrame:
    """Failure rate per UTC day (and deployment) in the window: the chart series."""
    window = window or parse_since(None)
    by = "day_deployment" if by_deployment else "day"
    sql = _grouped("failure_rates", by, "$since, $until, $since, $include_deleted", "run_day")
    frame = run_sql(store, sql, _window(window, include_deleted))
    return frame.drop(PREVIOUS_FAILURE_COLUMNS)


def previous_uncovered(window: Window, history_start: datetime | None) -> timedelta | None:
    """How much of the previous window lies before the earliest run in the file, when that is
    more than a tenth of it (a schedule's first run seldom falls on the window's start): its
    figures then compare against part of a window. None when covered or no previous window."""
    if window.since is None or history_start is None:
        return None
    gap = history_start - window.previous_start
    return gap if gap > (window.until - window.since) / 10 else None


def failure_rate_hourly(
    store: Store, window: Window | None = None, *, include_deleted: bool = False
) -> pl.DataFrame:
    """Failure rate per UTC hour (``run_hour``) in the window: the chart series of a short
    window, where UTC days would show two partial days that look like a collapse."""
    window = window or parse_since(None)
    sql = _grouped("failure_rates", "hour", "$since, $until, $since, $include_deleted", "run_hour")
    frame = run_sql(store, sql, _window(window, include_deleted))
    return frame.drop(PREVIOUS_FAILURE_COLUMNS)


def last_pull(store: Store) -> datetime | None:
    """When the latest successful pull (full or incremental) finished (None before the first
    one). A snapshot is not republished by a pull that changed nothing, so for the freshness
    of the file ask its live sync log (``health.collect(..., live_db=...)``)."""
    value = store.execute(
        "SELECT max(finished_at) FROM sync_runs WHERE status = 'ok' AND mode IN ('full', 'incremental')"
    ).scalar()
    return value if isinstance(value, datetime) else None


def runs_now(store: Store, *, late_after: float = 60.0) -> pl.DataFrame:
    """Per deployment: live runs running, waiting to start (expected already) and late
    (expected more than ``late_after`` s ago) now (the ``runs_now`` macro, ``sql/17_runs_now.sql``)."""
    return run_sql(
        store,
        "SELECT * FROM runs_now($late_after) ORDER BY running DESC, waiting_now DESC, deployment_id",
        {"late_after": late_after},
    )


def history_start(store: Store, *, include_deleted: bool = False) -> datetime | None:
    """When the earliest run in the file was meant to start: where ``--since all`` begins."""
    value = store.execute(
        "SELECT min(run_at) FROM flow_runs_enriched WHERE $include_deleted OR NOT is_deleted",
        {"include_deleted": include_deleted},
    ).scalar()
    return value if isinstance(value, datetime) else None


# -- runs: a list, and the ones stuck -------------------------------------------------

_CLOUD = re.compile(r"^(https?)://api\.([^/]+)/api/accounts/([^/]+)/workspaces/([^/?#]+)")
_OSS = re.compile(r"^(https?://[^/?#]+(?:/[^?#]*?)?)/api/?$")


def prefect_ui(api_url: str | None) -> str | None:
    """The Prefect UI the API URL belongs to, or None when it cannot be told: a Cloud
    workspace (``https://api.prefect.cloud/api/accounts/A/workspaces/W`` ->
    ``https://app.prefect.cloud/account/A/workspace/W``) or a server's UI at the root
    of its API (``http://host:4200/api`` -> ``http://host:4200``)."""
    if not api_url:
        return None
    url = re.sub(r"//[^/@]*@", "//", api_url.strip())  # no user:password in a link
    cloud = _CLOUD.match(url)
    if cloud:
        scheme, host, account, workspace = cloud.groups()
        return f"{scheme}://app.{host}/account/{account}/workspace/{workspace}"
    oss = _OSS.match(url)
    return oss.group(1) if oss else None


def ui_base(store: Store) -> str | None:
    """The Prefect UI of the server the file was pulled from (``prefect_ui`` of its API URL)."""
    raw = store.execute("SELECT value FROM sync_state WHERE key = 'api_url'").scalar()
    return prefect_ui(raw.strip('"') if isinstance(raw, str) else None)


def run_url(base: str | None, run_id: object) -> str | None:
    """A flow run's page in the Prefect UI at ``base``."""
    return None if base is None or run_id is None else f"{base}/runs/flow-run/{run_id}"


def _with_links(store: Store, frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``url``, the run's page in the Prefect UI (null when the API URL tells no UI)."""
    import polars as pl

    base = ui_base(store)
    if base is None:
        return frame.with_columns(pl.lit(None, dtype=pl.String).alias("url"))
    return frame.with_columns(
        pl.concat_str(pl.lit(f"{base}/runs/flow-run/"), pl.col("id").cast(pl.String)).alias("url")
    )


def runs(
    store: Store,
    window: Window | None = None,
    *,
    last: int = 20,
    filters: Filters | None = None,
    include_deleted: bool = False,
) -> pl.DataFrame:
    """The newest ``last`` runs in the window that pass ``filters``, failed and crashed ones
    unless ``filters.states`` says otherwise, with their error signature and a link to the
    run in the Prefect UI (the ``run_list`` macro, ``sql/56_run_list.sql``)."""
    if last < 1:
        raise ConfigError(f"--last {last} must be at least 1 (the number of runs to list).")
    window = window or parse_since(None)
    f = filters or Filters()
    if not f.states:
        f = Filters(f.flows, f.deployments, f.tags, FAILED_STATES)
    sql = f"""
        SELECT * FROM run_list($since, $until, $include_deleted, {_ONLY})
        ORDER BY run_at DESC, id LIMIT $last
    """
    params = {**_window(window, include_deleted), "last": last, **_filter_params(store, f)}
    return _with_links(store, run_sql(store, sql, params))


def stuck(
    store: Store,
    history: Window | None = None,
    *,
    late_after: float = 60.0,
    min_runs: int = 5,
    filters: Filters | None = None,
) -> pl.DataFrame:
    """Runs running longer than their deployment's usual p95 duration, or waiting past their
    expected start longer than its usual p95 lateness (and ``late_after``); usual = finished
    runs in ``history`` (the ``stuck_runs`` macro, ``sql/57_stuck_runs.sql``). Longest first."""
    history = history or parse_since("30d")
    only = _deployments_only(store, filters, "stuck")
    sql = """
        SELECT * FROM stuck_runs($history_since, $late_after, min_runs := $min_runs)
        WHERE run_selected(flow_id, deployment_id, NULL, NULL,
            $only_flows, $only_deployments, NULL, NULL)
        ORDER BY times_usual DESC, for_s DESC, id
    """
    params = {
        "history_since": history.start,
        "late_after": late_after,
        "min_runs": min_runs,
        **only,
    }
    return _with_links(store, run_sql(store, sql, params))
