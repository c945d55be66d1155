"""Reports: pure functions from the DuckDB file to Polars frames.

Owns: choosing which view or table macro of ``sql/`` answers each report,
with which window (``--since``) and grouping (``--by``) (their types and parser:
``report_args.py``; the statement run as a frame: ``frames.py``). Every figure is
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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowsync.errors import ConfigError
from flowsync.frames import SqlResult as SqlResult
from flowsync.frames import run_sql as run_sql
from flowsync.frames import sql_query as sql_query
from flowsync.frames import sql_result as sql_result
from flowsync.frames import tables as tables
from flowsync.report_args import DURATION_GROUPS as DURATION_GROUPS
from flowsync.report_args import GROUP_COLUMNS as GROUP_COLUMNS
from flowsync.report_args import GROUPS as GROUPS
from flowsync.report_args import INTERNAL_GROUPS as INTERNAL_GROUPS
from flowsync.report_args import ONLY, check_by, filter_params
from flowsync.report_args import Filters as Filters
from flowsync.report_args import Grouping as Grouping
from flowsync.report_args import Window as Window
from flowsync.report_args import parse_since as parse_since
from flowsync.report_args import utcnow as utcnow
from flowsync.states import FAILED_STATES

if TYPE_CHECKING:  # imported lazily: the CLI reads GROUPS without loading Polars or DuckDB
    import polars as pl

    from flowsync.store import Store


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
    check_by(by, allowed)
    sql = _grouped(macro, by, f"{args}, {ONLY}", order)
    return run_sql(store, sql, {**params, **filter_params(store, filters)})


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
    only = filter_params(store, filters)
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
        SELECT * FROM error_signatures($since, $until, $prev_start, $include_deleted, {ONLY})
        ORDER BY runs DESC, last_seen DESC, signature
    """
    frame = run_sql(
        store, sql, {**_params(window, include_deleted), **filter_params(store, filters)}
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
        SELECT * FROM run_list($since, $until, $include_deleted, {ONLY})
        ORDER BY run_at DESC, id DESC LIMIT $last
    """
    params = {**_window(window, include_deleted), "last": last, **filter_params(store, f)}
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
    runs in ``history`` (the ``stuck_runs`` macro, ``sql/57_stuck_runs.sql``). Furthest over it first
    (``times_usual``), then longest."""
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
