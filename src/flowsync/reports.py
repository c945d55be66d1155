"""Reports: pure functions from the DuckDB file to Polars frames.

Owns: the report queries (over the views in ``sql/``), the time windows they
cover (``--since``), and the one definition of failure every figure uses:

    failed       = FAILED or CRASHED
    finished     = COMPLETED, FAILED or CRASHED   (the ``runs`` column)
    failure_rate = failed / finished               (NULL when nothing finished)
    cancelled    = CANCELLED, reported apart and never a failure

Live figures leave out runs deleted on the server; ``include_deleted=True``
gives history (every run the file has seen). A notebook imports these
functions as they are; the CLI only renders what they return. Must not:
print, import duckdb/typer/rich, or write to the file. Values go into SQL as
parameters; only identifiers from the fixed tables below are formatted in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flowsync.errors import ConfigError, ReadOnlyError, StoreError
from flowsync.since import parse_since as since_time

if TYPE_CHECKING:  # imported lazily: the CLI reads GROUPS without loading Polars or DuckDB
    import polars as pl

    from flowsync.store import Store


@dataclass(frozen=True)
class Grouping:
    """A --by choice: the columns of ``flow_run_measures`` to group by, and how the
    group's id and name columns are looked up after aggregating (names are joined
    onto the few result rows, never onto every run)."""

    group: tuple[str, ...]
    select: str
    joins: str = ""


GROUPS: dict[str, Grouping] = {
    "flow": Grouping(("flow_id",), "a.flow_id, f.name AS flow_name", "LEFT JOIN flows AS f ON f.id = a.flow_id"),
    "deployment": Grouping(
        ("deployment_id", "flow_id"),
        "a.deployment_id, f.name AS flow_name, d.name AS deployment_name",
        "LEFT JOIN deployments AS d ON d.id = a.deployment_id LEFT JOIN flows AS f ON f.id = a.flow_id",
    ),
    "work_pool": Grouping(("work_pool_name",), "a.work_pool_name"),
    "tag": Grouping(("tag",), "a.tag"),
}
DURATION_GROUPS = ("flow", "deployment", "work_pool", "tag")
# A run with two tags counts once under each (distinct) tag; untagged runs under none.
_TAGGED = "(SELECT unnest(list_distinct(tags)) AS tag, * EXCLUDE (tags) FROM flow_run_measures)"
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


def _check_by(by: str, allowed: tuple[str, ...]) -> Grouping:
    if by not in allowed:
        raise ConfigError(f"--by {by!r} is not a grouping of this report; choose one of: {', '.join(allowed)}.")
    return GROUPS[by]


def _grouped(
    by: str, allowed: tuple[str, ...], aggregates: str, where: str, having: str, order: str, hidden: tuple[str, ...] = ()
) -> str:
    """Aggregate ``flow_run_measures`` per group, then add the group's names."""
    g = _check_by(by, allowed)
    keys = ", ".join(g.group)
    excluded = ", ".join(g.group + hidden)
    source = _TAGGED if by == "tag" else "flow_run_measures"
    return f"""
        WITH a AS (
            SELECT {keys}, {aggregates}
            FROM {source}
            WHERE {where}
            GROUP BY {keys}
            {having}
        )
        SELECT {g.select}, a.* EXCLUDE ({excluded})
        FROM a {g.joins}
        ORDER BY {order}, {g.select.split(",")[0]}
    """


def _live(include_deleted: bool) -> str:
    return "" if include_deleted else "AND NOT is_deleted"


# -- running SQL ---------------------------------------------------------------


def run_sql(store: Store, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
    """One statement through the store, as a Polars frame; a refused write says why."""
    try:
        return store.frame(sql, params)
    except ReadOnlyError as e:
        raise StoreError(
            f"{e.path} is open read-only, so statements that change it are refused "
            f"({e.detail}). Use SELECT to read; "
            "the file is changed only by flowsync pull and policy apply."
        ) from e


def sql_query(store: Store, sql: str) -> pl.DataFrame:
    """An ad-hoc query (``flowsync sql``): one or more statements, the last one's rows."""
    if not sql.strip():
        raise ConfigError("No SQL given: pass a query such as \"SELECT count(*) FROM flow_runs\".")
    return run_sql(store, sql)


# -- reports --------------------------------------------------------------------


def failures(store: Store, by: str = "deployment", window: Window | None = None, *, include_deleted: bool = False) -> pl.DataFrame:
    """One row per group: runs (finished), failed, failure_rate, cancelled, and the same for
    the previous window of equal length, with ``failure_rate_change`` (this - previous)."""
    window = window or parse_since(None)
    sql = _grouped(
        by, tuple(GROUPS),
        aggregates="""
            count(*) FILTER (WHERE is_finished AND run_at >= $since) AS runs,
            count(*) FILTER (WHERE is_failure AND run_at >= $since) AS failed,
            failed / nullif(runs, 0) AS failure_rate,
            count(*) FILTER (WHERE is_cancelled AND run_at >= $since) AS cancelled,
            count(*) FILTER (WHERE is_finished AND run_at < $since) AS prev_runs,
            count(*) FILTER (WHERE is_failure AND run_at < $since) AS prev_failed,
            prev_failed / nullif(prev_runs, 0) AS prev_failure_rate,
            count(*) FILTER (WHERE is_cancelled AND run_at < $since) AS prev_cancelled,
            failure_rate - prev_failure_rate AS failure_rate_change""",
        where=f"run_at >= $prev_start AND run_at < $until {_live(include_deleted)}",
        having="HAVING runs + cancelled + prev_runs + prev_cancelled > 0",
        order="failed DESC, failure_rate DESC NULLS LAST, runs DESC",
    )
    params = {"since": window.start, "prev_start": window.previous_start, "until": window.until}
    frame = run_sql(store, sql, params)
    if window.since is None:  # all history: there is no previous window
        prev = ["prev_runs", "prev_failed", "prev_failure_rate", "prev_cancelled", "failure_rate_change"]
        import polars as pl
        frame = frame.with_columns(pl.lit(None, dtype=frame.schema[c]).alias(c) for c in prev)
    return frame


def durations(store: Store, by: str = "deployment", window: Window | None = None, *, include_deleted: bool = False) -> pl.DataFrame:
    """Duration percentiles (seconds, wall clock) of finished runs per group, slowest p95 first."""
    window = window or parse_since(None)
    sql = _grouped(
        by, DURATION_GROUPS,
        # One list quantile: a single sort per group for all four percentiles.
        aggregates="""
            count(*) AS runs,
            quantile_cont(duration_s, [0.50, 0.90, 0.95, 0.99]) AS q,
            q[1] AS p50_s, q[2] AS p90_s, q[3] AS p95_s, q[4] AS p99_s,
            max(duration_s) AS max_s,
            avg(duration_s) AS mean_s""",
        where=f"is_finished AND duration_s IS NOT NULL AND run_at >= $since AND run_at < $until {_live(include_deleted)}",
        having="",
        order="p95_s DESC",
        hidden=("q",),
    )
    return run_sql(store, sql, {"since": window.start, "until": window.until})


def late(
    store: Store,
    by: str = "deployment",
    window: Window | None = None,
    *,
    late_after: float = 60.0,
    include_deleted: bool = False,
) -> pl.DataFrame:
    """Start lateness per group: runs that started, how many more than ``late_after`` s
    late, lateness percentiles, and ``waiting_now``: SCHEDULED/PENDING runs expected
    in the window that have not started yet."""
    window = window or parse_since(None)
    sql = _grouped(
        by, tuple(GROUPS),
        aggregates="""
            count(lateness_s) AS started,
            count(*) FILTER (WHERE lateness_s > $late_after) AS late_runs,
            quantile_cont(lateness_s, [0.50, 0.95]) AS q,
            q[1] AS p50_lateness_s, q[2] AS p95_lateness_s,
            max(lateness_s) AS max_lateness_s,
            count(*) FILTER (WHERE state_type IN ('SCHEDULED', 'PENDING') AND start_time IS NULL) AS waiting_now""",
        where=f"run_at >= $since AND run_at < $until {_live(include_deleted)}",
        having="HAVING started + waiting_now > 0",
        order="late_runs + waiting_now DESC, p95_lateness_s DESC NULLS LAST",
        hidden=("q",),
    )
    return run_sql(store, sql, {"since": window.start, "until": window.until, "late_after": late_after})


def flaky(store: Store, window: Window | None = None, *, last: int = 3) -> pl.DataFrame:
    """Deployments that fail: failures and retries in the window, the current failing
    streak over all history (``broken`` when the last ``last`` finished runs all
    failed), and the mean time from a failure to the next success (``mttr_s``).
    Live runs only."""
    if last < 1:
        raise ConfigError(f"--last {last} must be at least 1 (the number of latest runs that must all have failed).")
    window = window or parse_since(None)
    # One pass over the runs (a hash aggregate) and one over the failure episodes
    # (one window sort); the streak is the failed_runs of the unrecovered episode.
    sql = """
        WITH w AS (
            SELECT deployment_id,
                count(*) FILTER (WHERE is_finished AND run_at >= $since) AS runs,
                count(*) FILTER (WHERE is_failure AND run_at >= $since) AS failed,
                failed / nullif(runs, 0) AS failure_rate,
                count(*) FILTER (WHERE is_retried AND run_at >= $since) AS retried_runs,
                arg_max(state_type, run_at) FILTER (WHERE is_finished) AS last_state_type,
                max(run_at) FILTER (WHERE is_finished AND NOT is_failure) AS last_success_at,
                max(run_at) FILTER (WHERE is_failure) AS last_failure_at
            FROM flow_run_measures
            WHERE deployment_id IS NOT NULL AND NOT is_deleted AND run_at < $until
            GROUP BY deployment_id
        ), e AS (
            SELECT deployment_id,
                coalesce(sum(failed_runs) FILTER (WHERE recovered_at IS NULL), 0) AS failing_streak,
                count(*) FILTER (WHERE failed_at >= $since) AS failure_episodes,
                avg(recovery_s) FILTER (WHERE failed_at >= $since) AS mttr_s
            FROM (SELECT deployment_id, failed_at, failed_runs, recovered_at, recovery_s FROM failure_recoveries)
            WHERE failed_at < $until
            GROUP BY deployment_id
        )
        SELECT w.deployment_id, f.name AS flow_name, d.name AS deployment_name,
            w.runs, w.failed, w.failure_rate, w.retried_runs,
            coalesce(e.failing_streak, 0) AS failing_streak,
            coalesce(e.failing_streak, 0) >= $last AS broken,
            (w.failed > 0 AND w.failed < w.runs) OR w.retried_runs > 0 AS flaky,
            coalesce(e.failure_episodes, 0) AS failure_episodes,
            e.mttr_s,
            w.last_state_type, w.last_success_at, w.last_failure_at
        FROM w
        LEFT JOIN e ON e.deployment_id = w.deployment_id
        LEFT JOIN deployments AS d ON d.id = w.deployment_id
        LEFT JOIN flows AS f ON f.id = d.flow_id
        WHERE w.failed > 0 OR w.retried_runs > 0 OR coalesce(e.failing_streak, 0) >= $last
        ORDER BY broken DESC, failing_streak DESC, failure_rate DESC NULLS LAST, w.deployment_id
    """
    return run_sql(store, sql, {"since": window.start, "until": window.until, "last": last})


def failure_rate_daily(store: Store, window: Window | None = None, *, by_deployment: bool = True) -> pl.DataFrame:
    """Failure rate per UTC day (and deployment) in the window: the chart series."""
    window = window or parse_since(None)
    view = "failure_rates_by_day_deployment" if by_deployment else "failure_rates_by_day"
    sql = f"""
        SELECT * FROM {view}
        WHERE run_day >= CAST(timezone('UTC', $since) AS DATE) AND run_day <= CAST(timezone('UTC', $until) AS DATE)
        ORDER BY ALL
    """
    return run_sql(store, sql, {"since": window.start, "until": window.until})

