"""``flowsync sql`` and ``flowsync report ...``: run a query or a report, render it.

Owns: choosing the output format and writing the data (how each format writes a
value is ``flowsync.cli.formats``; terminal tables are ``flowsync.cli.render``).
Data goes to stdout (or --output); every message (a note that a table was cut, a
warning that the data does not cover the previous window) to stderr, so
``flowsync report failures --format csv | ...`` pipes cleanly.
``--format`` defaults to a table on a terminal and to CSV when stdout is a
pipe or file. Parquet is binary: it goes to --output, or to stdout only when
stdout is not a terminal. Must not: hold SQL (that is ``flowsync.reports``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowsync import present, reports
from flowsync.cli import formats, render
from flowsync.cli.common import LiveOption, WaitOption, err, errors, out
from flowsync.cli.report_options import (
    FORMATS,
    FormatOption,
    OutputOption,
    ReportOptions,
    complete,
    report_options,
)
from flowsync.config import resolve_db_path
from flowsync.errors import ConfigError

if TYPE_CHECKING:  # Polars and DuckDB load inside the commands, so --help stays fast
    import polars as pl

    from flowsync.store import Store

HEALTH_FORMATS = (*FORMATS, "openmetrics")


def _by_option(choices: tuple[str, ...]) -> Any:
    return typer.Option(
        "--by",
        help=f"Group by: {', '.join(choices)}.",
        metavar="[" + "|".join(choices) + "]",
        autocompletion=complete(choices),
    )


# -- rendering --------------------------------------------------------------------


def _choose_format(fmt: str | None, output: Path | None, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt is None:
        return "table" if output is None and sys.stdout.isatty() else "csv"
    fmt = fmt.lower()
    if fmt not in allowed:
        raise ConfigError(
            f"--format {fmt!r} is not an output format; choose one of: {', '.join(allowed)}."
        )
    if fmt == "table" and output is not None:
        raise ConfigError(
            "--format table is for the terminal; use csv, json, markdown or parquet with --output."
        )
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise ConfigError(
            "Parquet is binary and stdout is a terminal: pass --output FILE or redirect stdout."
        )
    return fmt


def write_atomic(path: Path, data: bytes, option: str = "--output") -> None:
    """Write to a temporary file beside ``path``, then rename: a reader (node_exporter's
    textfile collector, a browser) sees the old file or the new one, never half of one."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConfigError(
            f"Cannot write {option} {path}: {e.strerror}. Choose a writable path."
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; collectors run as another user
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(
            f"Cannot write {option} {path}: {e.strerror}. Choose a writable path."
        ) from e


def emit(
    frame: pl.DataFrame,
    fmt: str,
    output: Path | None,
    title: str = "",
    report: str | None = None,
    ids: bool = False,
    json_columns: tuple[str, ...] = (),
) -> None:
    """Write ``frame`` in ``fmt`` (see ``flowsync.cli.formats``); ``report`` names a report,
    whose table and markdown show readable values (names, percentages) instead of raw ones."""
    if fmt == "table":
        if report is not None:
            out.print(render.readable_table(frame, report, ids=ids, width=out.width, title=title))
        else:
            headers, rows = formats.text_rows(frame)
            fitted = render.result_table(
                headers, rows, formats.numeric_columns(frame), width=out.width, title=title
            )
            out.print(fitted.table)
            _say_what_was_cut(fitted)
        if frame.is_empty():
            err.print("no rows", highlight=False)
        return
    if fmt == "markdown":
        text = (
            render.readable_markdown(frame, report, ids=ids)
            if report is not None
            else formats.to_markdown(frame)
        )
        data = text.encode()
    elif fmt == "line":
        data = formats.to_lines(frame).encode()
    elif fmt == "csv":
        data = formats.to_csv(frame)
    elif fmt == "json":
        data = formats.to_json(frame, json_columns)
    else:
        data = formats.to_parquet(frame)
    write(data, output, f"{frame.height} rows")


def _say_what_was_cut(fitted: render.Fitted) -> None:
    notes = []
    if fitted.hidden_columns:
        n = len(fitted.hidden_columns)
        notes.append(
            f"{n} column{'s' if n > 1 else ''} not shown ({', '.join(fitted.hidden_columns)})"
        )
    if fitted.cut_cells:
        notes.append(f"{fitted.cut_cells} cell{'s' if fitted.cut_cells > 1 else ''} cut (…)")
    if notes:
        err.print(
            f"{'; '.join(notes)} to fit {out.width} columns: --format line shows every value whole.",
            highlight=False,
        )


def write(data: bytes, output: Path | None, what: str) -> None:
    if output is not None:
        write_atomic(output, data)
        err.print(f"wrote {what} to {output}", highlight=False)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


DbsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--db",
        help="DuckDB file. Default: $FLOWSYNC_DB, else ./flowsync.duckdb. Repeat to query several "
        "files together (NAME=PATH names a source; every table and view gets a source column).",
        show_default=False,
        metavar="PATH|NAME=PATH",
    ),
]


def _open(db: Path | None, wait: float, live: bool) -> Store:
    from flowsync.store import Store

    return Store.reader(resolve_db_path(db), live=live, wait=wait)


def _open_many(dbs: list[str], wait: float, live: bool) -> Store:
    if len(dbs) <= 1 and not any("=" in d and not Path(d).exists() for d in dbs):
        return _open(Path(dbs[0]) if dbs else None, wait, live)
    from flowsync.store import Store

    return Store.reader(dbs, live=live)


# -- commands ---------------------------------------------------------------------


def _read_sql(query: str | None, file: Path | None) -> str:
    """The SQL to run: the argument, ``-`` for stdin, or --file."""
    if query is not None and file is not None:
        raise ConfigError("Pass the SQL either as an argument or with --file, not both.")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"Cannot read --file {file}: {e.strerror}.") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"--file {file} is not UTF-8 text.") from e
    if query == "-":
        return sys.stdin.read()
    if query is None:
        raise ConfigError(
            'No SQL given: pass a query such as "SELECT count(*) FROM flow_runs", '
            "- to read it from stdin, --file FILE, or --tables to see what there is."
        )
    return query


def sql_cmd(
    query: Annotated[
        str | None,
        typer.Argument(
            help="SQL to run (read-only), or - to read it from stdin. Tables: flows, "
            "deployments, flow_runs; views and macros: --tables, docs/analysis.md.",
            show_default=False,
            metavar="SQL",
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="Read the SQL from this file.", show_default=False, metavar="FILE"
        ),
    ] = None,
    tables: Annotated[
        bool,
        typer.Option(
            "--tables", help="List the tables, views and macros with their columns, and exit."
        ),
    ] = False,
    fmt: FormatOption = None,
    output: OutputOption = None,
    db: DbsOption = None,
    wait: WaitOption = 0.0,
    live: LiveOption = False,
) -> None:
    """Run SQL on a read-only connection to the DuckDB file and print the rows.

    Statements that change the file are refused. With several statements,
    the rows of the last one are printed. Every DuckDB type prints (intervals,
    maps, structs, blobs ...); a wide result is cut to the terminal with a
    note, and --format line shows one column = value line each. Reads the
    latest published snapshot (--live: the live file). Several --db files are
    queried together, with a source column (one file per server or workspace).

    Example: flowsync sql "SELECT * FROM failure_rates_by_deployment" --format markdown

    Example: flowsync sql - < query.sql --format line

    Example: flowsync sql "SELECT source, count(*) FROM flow_runs GROUP BY 1" --db prod=prod.duckdb --db dev=dev.duckdb
    """
    with errors():
        chosen = _choose_format(fmt, output)
        sql = None if tables else _read_sql(query, file)
        with _open_many(db or [], wait, live) as store:
            if sql is None:
                emit(reports.tables(store), chosen, output)
                return
            result = reports.sql_result(store, sql)
        emit(result.frame, chosen, output, json_columns=result.json_columns)


report_app = typer.Typer(
    name="report",
    help="Reports over the pulled runs: failures, durations, late, flaky, errors, unresolved, "
    "runs, stuck, health.\n\nEach takes --format, --output and --db; most take --since and --by.\n\n"
    "Example: flowsync report failures --by deployment --since 7d",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _warn_uncovered(window: reports.Window, data_start: datetime | None) -> None:
    """A warning on stderr when the previous window begins well before the data does."""
    gap = reports.previous_uncovered(window, data_start)
    if gap is None or data_start is None:
        return
    length = (window.until - window.start).total_seconds()
    err.print(
        f"warning: {present.uncovered_note(length, gap.total_seconds(), data_start)}",
        highlight=False,
    )


def _run_report(
    opts: ReportOptions,
    title: str,
    build: Callable[[Store, reports.Window], pl.DataFrame],
    *,
    report: str,
    compares: bool = False,
) -> None:
    """``compares``: the report has previous-window columns (warn when the data does not
    cover that window)."""
    from flowsync import report_html

    with errors():
        window = reports.parse_since(opts.since)
        # --html alone writes only the page; with --format (or --output) the data too
        wants_data = opts.html is None or opts.fmt is not None or opts.output is not None
        chosen = _choose_format(opts.fmt, opts.output) if wants_data else None
        with _open(opts.db, opts.wait, opts.live) as store:
            frame = build(store, window)
            if compares and window.since is not None:
                _warn_uncovered(
                    window, reports.history_start(store, include_deleted=opts.include_deleted)
                )
            page = (
                report_html.build_page(
                    store,
                    window,
                    title,
                    frame,
                    include_deleted=opts.include_deleted,
                    report=report,
                )
                if opts.html
                else None
            )
        if opts.html is not None and page is not None:
            write_atomic(opts.html, page.encode(), "--html")
            err.print(
                f"wrote {title} ({frame.height} rows, {window.describe()}) to {opts.html}",
                highlight=False,
            )
        if chosen is None:
            return
        emit(
            frame,
            chosen,
            opts.output,
            title=f"{title}, {window.describe()}",
            report=report,
            ids=opts.ids,
        )


@report_app.command("failures")
@report_options(since="7d")
def failures_cmd(
    opts: ReportOptions,
    by: Annotated[str, _by_option(tuple(reports.GROUPS))] = "deployment",
) -> None:
    """Failure rate per flow, deployment, work pool or tag, against the previous window.

    failed = FAILED or CRASHED; runs = finished (COMPLETED, FAILED or CRASHED);
    failure_rate = failed / runs; CANCELLED is counted apart. The prev_* columns
    cover the window of the same length just before --since.

    Example: flowsync report failures --by deployment --since 7d --format csv
    """
    _run_report(
        opts,
        f"Failures by {by}",
        lambda store, window: reports.failures(
            store, by, window, include_deleted=opts.include_deleted, filters=opts.filters
        ),
        report="failures",
        compares=True,
    )


@report_app.command("durations")
@report_options(since="7d")
def durations_cmd(
    opts: ReportOptions,
    by: Annotated[str, _by_option(reports.DURATION_GROUPS)] = "deployment",
) -> None:
    """Duration percentiles (p50, p90, p95, p99, max, mean; seconds) of finished runs per group.

    Example: flowsync report durations --by flow --since 30d
    """
    _run_report(
        opts,
        f"Durations by {by}",
        lambda store, window: reports.durations(
            store, by, window, include_deleted=opts.include_deleted, filters=opts.filters
        ),
        report="durations",
    )


@report_app.command("late")
@report_options(since="7d")
def late_cmd(
    opts: ReportOptions,
    by: Annotated[str, _by_option(tuple(reports.GROUPS))] = "deployment",
    late_after: Annotated[
        float,
        typer.Option(
            "--late-after",
            help="Seconds after the expected start that count as late.",
            min=0,
            metavar="SECONDS",
        ),
    ] = 60.0,
) -> None:
    """Start lateness per group (start time - expected start) and runs still waiting to start.

    Example: flowsync report late --by work_pool --late-after 300
    """
    _run_report(
        opts,
        f"Lateness by {by}",
        lambda store, window: reports.late(
            store,
            by,
            window,
            late_after=late_after,
            include_deleted=opts.include_deleted,
            filters=opts.filters,
        ),
        report="late",
    )


@report_app.command("flaky")
@report_options(since="30d", include_deleted=False, filters=("flow", "deployment"))
def flaky_cmd(
    opts: ReportOptions,
    last: Annotated[
        int,
        typer.Option("--last", help="Broken = the last N finished runs all failed.", metavar="N"),
    ] = 3,
    min_rate: Annotated[
        float,
        typer.Option(
            "--min-rate",
            help="Flaky needs a failure (or retry) rate of at least this share (0.05 = 5%).",
            min=0,
            max=1,
            metavar="SHARE",
        ),
    ] = 0.05,
) -> None:
    """Flaky and broken deployments: failures, retried runs, failing streak, time to recover (MTTR).

    Broken: the last --last finished runs all failed. Flaky: not broken, and it
    failed and recovered by itself at least twice in the window at a failure
    rate of at least --min-rate, or at least --min-rate of its runs needed a
    retry. A rare failure, or one long outage, is not flaky.

    Example: flowsync report flaky --last 3 --since 30d --format json
    """
    _run_report(
        opts,
        "Flaky and broken deployments",
        lambda store, window: reports.flaky(
            store, window, last=last, min_rate=min_rate, filters=opts.filters
        ),
        report="flaky",
    )


@report_app.command("errors")
@report_options(since="7d")
def errors_cmd(opts: ReportOptions) -> None:
    """Why runs fail: failed and crashed runs grouped by error signature, most runs first.

    A signature is the first line of the state message with ids, UUIDs, numbers,
    hex, paths, URLs, times and quoted values masked, and a short hash of it.
    Per signature: runs, share of failures, change against the previous window,
    deployments and flows affected, first and last seen, and an example run with
    its full message (csv/json/parquet, or --ids).

    Example: flowsync report errors --since 24h
    """
    _run_report(
        opts,
        "Error signatures",
        lambda store, window: reports.errors(
            store, window, include_deleted=opts.include_deleted, filters=opts.filters
        ),
        report="errors",
        compares=True,
    )


@report_app.command("unresolved")
@report_options(since=None, include_deleted=False, filters=("flow", "deployment"))
def unresolved_cmd(
    opts: ReportOptions,
    since: Annotated[str | None, typer.Option("--since", hidden=True)] = None,
) -> None:
    """Deployments whose latest finished run failed: since when, how many failures, which error.

    The on-call backlog, oldest first: failing since (the first failure after
    the last success), failures since the last success, and the signature of
    the latest failure. Current state of live runs, so no --since.

    Example: flowsync report unresolved --format json
    """
    if since is not None:
        with errors():
            raise ConfigError(
                "report unresolved has no --since: it is the current state (each deployment's "
                "latest finished run). For failures in a window: report errors --since "
                f"{since} or report failures --since {since}."
            )
    _run_report(
        opts,
        "Unresolved failures",
        lambda store, window: reports.unresolved(store, filters=opts.filters),
        report="unresolved",
    )


@report_app.command("runs")
@report_options(since="7d")
def runs_cmd(
    opts: ReportOptions,
    last: Annotated[
        int, typer.Option("--last", help="How many runs, newest first.", metavar="N")
    ] = 20,
) -> None:
    """The last runs, failed and crashed ones unless --state says otherwise, with their
    error signature and a link to the run in the Prefect UI.

    The run list behind a failure rate: filter it to one deployment, flow, tag
    or state. The link is the run's page on the server or Cloud workspace the
    file was pulled from (empty when the API URL does not tell the UI).

    Example: flowsync report runs --deployment etl/prod --last 10
    """
    _run_report(
        opts,
        "Runs",
        lambda store, window: reports.runs(
            store, window, last=last, filters=opts.filters, include_deleted=opts.include_deleted
        ),
        report="runs",
    )


@report_app.command("stuck")
@report_options(since=None, include_deleted=False, filters=("flow", "deployment"))
def stuck_cmd(
    opts: ReportOptions,
    history: Annotated[
        str,
        typer.Option(
            "--history",
            help="Finished runs whose p95 is the usual: 30d, 2w, a date, or 'all'.",
            metavar="AGE|DATE|all",
        ),
    ] = "30d",
    late_after: Annotated[
        float,
        typer.Option(
            "--late-after",
            help="A waiting run is stuck only past this many seconds too.",
            min=0,
            metavar="SECONDS",
        ),
    ] = 60.0,
    min_runs: Annotated[
        int,
        typer.Option(
            "--min-runs",
            help="Deployments with fewer finished runs have no usual and are left out.",
            min=1,
            metavar="N",
        ),
    ] = 5,
) -> None:
    """Runs running or waiting longer than their deployment's usual p95, longest first.

    Running: for longer than the p95 duration of the deployment's finished runs
    in --history. Waiting (SCHEDULED or PENDING, due): past the expected start
    for longer than its p95 lateness and --late-after. As of the last pull.

    Example: flowsync report stuck --history 30d
    """
    _run_report(
        opts,
        "Stuck runs",
        lambda store, window: reports.stuck(
            store,
            reports.parse_since(history),
            late_after=late_after,
            min_runs=min_runs,
            filters=opts.filters,
        ),
        report="stuck",
    )


HealthFormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table, line, csv, json, markdown, parquet or openmetrics (Prometheus textfile "
        "collector). Default: table on a terminal, csv otherwise.",
        show_default=False,
        metavar="[" + "|".join(HEALTH_FORMATS) + "]",
        autocompletion=complete(HEALTH_FORMATS),
    ),
]
HealthHtmlOption = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write the health page (one self-contained HTML file) to FILE (with --format "
        "or --output, the figures are written too).",
        show_default=False,
        metavar="FILE",
    ),
]


@report_app.command("health")
@report_options(since="7d", fmt=HealthFormatOption, html=HealthHtmlOption, ids=False, filters=())
def health_cmd(
    opts: ReportOptions,
    late_after: Annotated[
        float,
        typer.Option(
            "--late-after",
            help="Seconds after the expected start that count as late (late starts, runs late now).",
            min=0,
            metavar="SECONDS",
        ),
    ] = 60.0,
) -> None:
    """The headline figures against the previous window; --html writes the one-page health report.

    The page: headline, runs and failure rate per day, a deployment x day
    heatmap of failures, top error signatures, unresolved failures, slowest
    deployments (p50/p95 and trend) and lateness. --format openmetrics writes
    the figures for node_exporter's textfile collector (atomically with --output).

    Example: flowsync report health --since 7d --html health.html
    """
    from flowsync import health as health_mod
    from flowsync import openmetrics, report_html

    with errors():
        window = reports.parse_since(opts.since)
        wants_data = opts.html is None or opts.fmt is not None or opts.output is not None
        chosen = _choose_format(opts.fmt, opts.output, HEALTH_FORMATS) if wants_data else None
        with _open(opts.db, opts.wait, opts.live) as store:
            figures = health_mod.collect(
                store,
                window,
                include_deleted=opts.include_deleted,
                late_after=late_after,
                live_db=None if opts.live else resolve_db_path(opts.db),
            )
        if chosen != "openmetrics":  # a textfile job's stderr goes to cron mail
            _warn_uncovered(window, figures.history_start)
        if opts.html is not None:
            write_atomic(opts.html, report_html.render_health(figures).encode(), "--html")
            err.print(
                f"wrote the health page ({window.describe()}) to {opts.html}", highlight=False
            )
        if chosen is None:
            return
        if chosen == "openmetrics":
            write(openmetrics.render(figures).encode(), opts.output, "OpenMetrics")
            return
        if chosen == "table":
            out.print(render.headline_table(figures.headline, f"Health, {window.describe()}"))
            return
        emit(health_mod.headline_frame(figures), chosen, opts.output)
