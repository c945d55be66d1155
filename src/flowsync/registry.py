"""The report registry: every ``flowsync report`` declared once.

Owns: per report, its name, title, help text, the function of ``flowsync.reports``
that answers it (and the macro or view of ``sql/`` behind that), its groupings
(``--by``), its default window (``--since``), which filters and options it takes,
and the columns a person sees, each with its kind (how ``present.show`` writes it)
and its priority in a narrow terminal. The ``report`` commands are generated from
it (``flowsync.cli.analysis_cmds``), ``flowsync.report`` runs a report by its name
(``flowsync.operations``), the terminal, markdown and HTML tables read its columns.
Must not: run SQL (``flowsync.reports`` does), print, or import typer/rich.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowsync import reports
from flowsync.config import check_number
from flowsync.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

ALL_FILTERS = ("flow", "deployment", "tag", "state")
RUNS_FILTERS = ("flow", "deployment")  # per-deployment reports select by flow and deployment
BY = tuple(reports.GROUPS)


@dataclass(frozen=True)
class Column:
    """A column a person sees: its name in the frame, how it reads (``present.KINDS``),
    and its priority (10 = dropped last when a terminal is narrow)."""

    name: str
    kind: str
    priority: int


# The largest count an option takes (--last, --min-runs, --sample): it reaches DuckDB as a
# BIGINT (LIMIT, a macro's parameter), so a larger one is refused as an argument (exit 2)
# rather than failing inside a query; a billion is more runs than any file holds.
COUNT_MAX = 1_000_000_000


@dataclass(frozen=True)
class Param:
    """An option of one report (``--late-after``): ``kind`` ``window`` is a --since-like
    text the report gets as a ``reports.Window``."""

    name: str
    flag: str
    type: type
    default: Any
    help: str
    metavar: str
    min: float | None = None
    max: float | None = None
    kind: str = "value"

    @property
    def top(self) -> float | None:
        """The most it takes: ``max``, or ``COUNT_MAX`` for a count that declares none."""
        return COUNT_MAX if self.type is int and self.max is None else self.max

    def check(self, value: Any) -> Any:
        """``value`` if it is within ``min`` .. ``top`` (finite: not NaN); else one line naming
        the flag (the command line's own check, for a library caller)."""
        if value is None:
            return value
        if self.type in (int, float):
            return check_number(
                self.flag,
                value,
                whole=self.type is int,
                low=self.min,
                high=self.top,
                metavar=self.metavar,
            )
        if not isinstance(value, self.type):
            kind = "text" if self.type is str else "a value"
            raise ConfigError(f"{self.flag} {value!r} is not {kind}: pass {self.metavar}.")
        return value


@dataclass(frozen=True)
class Report:
    """One report: what ``flowsync report NAME`` shows and ``flowsync.report(db, NAME)``
    returns. ``since`` None: no window (current state). ``compares``: it has
    previous-window columns. ``no_since``: what to say to a --since on a report without one.
    ``query`` None: the health figures (``flowsync.health``), not one query."""

    name: str
    title: str
    help: str
    query: Callable[..., pl.DataFrame] | None
    source: str
    columns: tuple[Column, ...]
    groupings: tuple[str, ...] = ()
    default_by: str | None = None
    since: str | None = "7d"
    include_deleted: bool = True
    ids: bool = True
    filters: tuple[str, ...] = ALL_FILTERS
    params: tuple[Param, ...] = ()
    compares: bool = False
    no_since: str | None = None

    def heading(self, by: str | None = None) -> str:
        return self.title.format(by=by or self.default_by)

    def kind_of(self, column: str) -> str:
        """How ``column`` reads (``text`` for one the report does not declare)."""
        return next((c.kind for c in self.columns if c.name == column), "text")


def _cols(*spec: tuple[str, str, int]) -> tuple[Column, ...]:
    return tuple(Column(*c) for c in spec)


@dataclass(frozen=True)
class Figure:
    """A headline figure of ``report health``: this window's column, the previous
    window's and the change's (None: the figure has none), and its kind."""

    label: str
    column: str
    previous: str | None
    change: str | None
    kind: str


HEADLINE = (
    Figure("finished runs", "runs", "prev_runs", "runs_change", "count"),
    Figure("failed runs", "failed", "prev_failed", "failed_change", "count"),
    Figure("failure rate", "failure_rate", "prev_failure_rate", "failure_rate_change", "percent"),
    Figure("cancelled", "cancelled", "prev_cancelled", None, "count"),
    Figure("p50 duration", "p50_s", "prev_p50_s", "p50_change_s", "duration"),
    Figure("p95 duration", "p95_s", "prev_p95_s", "p95_change_s", "duration"),
    Figure("late starts", "late_runs", None, None, "count"),
    Figure("p95 lateness", "p95_lateness_s", None, None, "duration"),
    Figure("error signatures", "signatures", None, None, "count"),
    Figure("unresolved deployments", "unresolved_deployments", None, None, "count"),
)

LATE_AFTER = Param(
    "late_after",
    "--late-after",
    float,
    60.0,
    "Seconds after the expected start that count as late.",
    "SECONDS",
    min=0,
)

REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "failures",
            "Failures by {by}",
            """Failure rate per flow, deployment, work pool or tag, against the previous window.

    failed = FAILED or CRASHED; runs = finished (COMPLETED, FAILED or CRASHED);
    failure_rate = failed / runs; CANCELLED is counted apart. The prev_* columns
    cover the window of the same length just before --since.

    Example: flowsync report failures --by deployment --since 7d --format csv
    """,
            reports.failures,
            "failure_rates (sql/13_failure_rates.sql)",
            _cols(
                ("runs", "count", 9),
                ("failed", "count", 9),
                ("failure_rate", "percent", 9),
                ("failure_rate_change", "rate_change", 8),
                ("cancelled", "count", 5),
                ("prev_failure_rate", "percent", 4),
                ("prev_failed", "count", 3),
                ("prev_runs", "count", 2),
                ("prev_cancelled", "count", 1),
            ),
            groupings=BY,
            default_by="deployment",
            compares=True,
        ),
        Report(
            "durations",
            "Durations by {by}",
            """Duration percentiles (p50, p90, p95, p99, max, mean; seconds) of finished runs per group.

    Example: flowsync report durations --by flow --since 30d
    """,
            reports.durations,
            "duration_percentiles (sql/14_duration_percentiles.sql)",
            _cols(
                ("runs", "count", 8),
                ("p50_s", "duration", 9),
                ("p90_s", "duration", 5),
                ("p95_s", "duration", 9),
                ("p99_s", "duration", 4),
                ("max_s", "duration", 6),
                ("mean_s", "duration", 3),
            ),
            groupings=BY,
            default_by="deployment",
        ),
        Report(
            "late",
            "Lateness by {by}",
            """Start lateness per group (start time - expected start) and runs still waiting to start.

    Example: flowsync report late --by work_pool --late-after 300
    """,
            reports.late,
            "lateness (sql/15_lateness.sql)",
            _cols(
                ("started", "count", 8),
                ("late_runs", "count", 9),
                ("p50_lateness_s", "duration", 7),
                ("p95_lateness_s", "duration", 9),
                ("max_lateness_s", "duration", 5),
                ("waiting_now", "count", 8),
            ),
            groupings=BY,
            default_by="deployment",
            params=(LATE_AFTER,),
        ),
        Report(
            "flaky",
            "Flaky and broken deployments",
            """Flaky and broken deployments: failures, retried runs, failing streak, time to recover (MTTR).

    Broken: the last --last finished runs all failed. Flaky: not broken, and it
    failed and recovered by itself at least twice in the window at a failure
    rate of at least --min-rate, or at least --min-rate of its runs needed a
    retry. A rare failure, or one long outage, is not flaky.

    Example: flowsync report flaky --last 3 --since 30d --format json
    """,
            reports.flaky,
            "flaky_deployments (sql/55_flaky_deployments.sql)",
            _cols(
                ("runs", "count", 7),
                ("failed", "count", 8),
                ("failure_rate", "percent", 8),
                ("retried_runs", "count", 5),
                ("failing_streak", "count", 9),
                ("broken", "flag", 9),
                ("flaky", "flag", 6),
                ("failure_episodes", "count", 3),
                ("mttr_s", "duration", 6),
                ("last_state_type", "text", 2),
                ("last_success_at", "timestamp", 4),
                ("last_failure_at", "timestamp", 4),
            ),
            since="30d",
            include_deleted=False,
            filters=RUNS_FILTERS,
            params=(
                Param(
                    "last", "--last", int, 3, "Broken = the last N finished runs all failed.", "N"
                ),
                Param(
                    "min_rate",
                    "--min-rate",
                    float,
                    0.05,
                    "Flaky needs a failure (or retry) rate of at least this share (0.05 = 5%).",
                    "SHARE",
                    min=0,
                    max=1,
                ),
            ),
        ),
        Report(
            "errors",
            "Error signatures",
            """Why runs fail: failed and crashed runs grouped by error signature, most runs first.

    A signature is the first line of the state message with ids, UUIDs, numbers,
    hex, paths, URLs, times and quoted values masked, and a short hash of it.
    Per signature: runs, share of failures, change against the previous window,
    deployments and flows affected, first and last seen, and an example run with
    its full message (csv/json/parquet, or --ids).

    Example: flowsync report errors --since 24h
    """,
            reports.errors,
            "error_signatures (sql/16_error_signatures.sql)",
            _cols(
                ("error_text", "text", 10),
                ("runs", "count", 10),
                ("share", "percent", 6),
                ("runs_change", "count_change", 8),
                ("deployments", "count", 5),
                ("flows", "count", 3),
                ("first_seen", "timestamp", 7),
                ("last_seen", "timestamp", 6),
                ("signature", "text", 4),
                ("example_state_type", "text", 2),
            ),
            compares=True,
        ),
        Report(
            "unresolved",
            "Unresolved failures",
            """Deployments whose latest finished run failed: since when, how many failures, which error.

    The on-call backlog, oldest first: failing since (the first failure after
    the last success), failures since the last success, and the signature of
    the latest failure. Current state of live runs, so no --since.

    Example: flowsync report unresolved --format json
    """,
            reports.unresolved,
            "unresolved_failures (sql/54_unresolved_failures.sql)",
            _cols(
                ("failing_since", "timestamp", 9),
                ("failures_since_success", "count", 9),
                ("last_success_at", "timestamp", 6),
                ("latest_state_type", "text", 3),
                ("latest_error_text", "text", 8),
                ("latest_signature", "text", 4),
                ("latest_failure_at", "timestamp", 5),
            ),
            since=None,
            include_deleted=False,
            filters=RUNS_FILTERS,
            no_since="report unresolved has no --since: it is the current state (each "
            "deployment's latest finished run). For failures in a window: report errors "
            "--since {since} or report failures --since {since}.",
        ),
        Report(
            "runs",
            "Runs",
            """The last runs, failed and crashed ones unless --state says otherwise, with their
    error signature and a link to the run in the Prefect UI.

    The run list behind a failure rate: filter it to one deployment, flow, tag
    or state. The link is the run's page on the server or Cloud workspace the
    file was pulled from (empty when the API URL does not tell the UI).

    Example: flowsync report runs --deployment etl/prod --last 10
    """,
            reports.runs,
            "run_list (sql/56_run_list.sql)",
            _cols(
                ("run_at", "timestamp", 9),
                ("name", "text", 8),
                ("state_type", "text", 7),
                ("duration_s", "duration", 5),
                ("error_signature", "text", 4),
                ("error_text", "text", 8),
                ("url", "text", 6),
            ),
            params=(Param("last", "--last", int, 20, "How many runs, newest first.", "N"),),
        ),
        Report(
            "stuck",
            "Stuck runs",
            """Runs running or waiting longer than their deployment's usual p95, furthest over it first.

    Running: for longer than the p95 duration of the deployment's finished runs
    in --history. Waiting (SCHEDULED or PENDING, due): past the expected start
    for longer than its p95 lateness and --late-after. As of the last pull.

    Example: flowsync report stuck --history 30d
    """,
            reports.stuck,
            "stuck_runs (sql/57_stuck_runs.sql)",
            _cols(
                ("name", "text", 8),
                ("state_type", "text", 9),
                ("since", "timestamp", 6),
                ("for_s", "duration", 9),
                ("usual_p95_s", "duration", 8),
                ("times_usual", "ratio", 7),
                ("url", "text", 6),
            ),
            since=None,
            include_deleted=False,
            filters=RUNS_FILTERS,
            params=(
                Param(
                    "history",
                    "--history",
                    str,
                    "30d",
                    "Finished runs whose p95 is the usual: 30d, 2w, a date, or 'all'.",
                    "AGE|DATE|all",
                    kind="window",
                ),
                Param(
                    "late_after",
                    "--late-after",
                    float,
                    60.0,
                    "A waiting run is stuck only past this many seconds too.",
                    "SECONDS",
                    min=0,
                ),
                Param(
                    "min_runs",
                    "--min-runs",
                    int,
                    5,
                    "Deployments with fewer finished runs have no usual and are left out.",
                    "N",
                    min=1,
                ),
            ),
        ),
        Report(
            "health",
            "Health",
            """The headline figures against the previous window; --html writes the one-page health report.

    The page: headline, runs and failure rate per day, a deployment x day
    heatmap of failures, top error signatures, unresolved failures, slowest
    deployments (p50/p95 and trend) and lateness. --format openmetrics writes
    the figures for node_exporter's textfile collector (atomically with --output).

    Example: flowsync report health --since 7d --html health.html
    """,
            None,
            "failure_rates, duration_percentiles, lateness, error_signatures, "
            "unresolved_failures, runs_now (flowsync.health)",
            tuple(Column(f.column, f.kind, 9) for f in HEADLINE),
            ids=False,
            filters=(),
            params=(
                Param(
                    "late_after",
                    "--late-after",
                    float,
                    60.0,
                    "Seconds after the expected start that count as late (late starts, runs late now).",
                    "SECONDS",
                    min=0,
                ),
            ),
        ),
    )
}


def get(name: str) -> Report:
    """The report called ``name``; an unknown name is a ``ConfigError`` listing the names."""
    try:
        return REPORTS[name]
    except KeyError:
        raise ConfigError(f"No report {name!r}; the reports are: {', '.join(REPORTS)}.") from None
