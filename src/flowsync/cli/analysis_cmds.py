"""``flowsync sql`` and ``flowsync report ...``: run a query or a report, render it.

The report commands are generated from ``flowsync.registry`` (one per report, its
options from the declaration, ``report_options.report_command``); each is
``run_report``: parse, one call to ``flowsync.report``, render.

Owns: choosing the output format and writing the data (how each format writes a
value is ``flowsync.cli.formats``; terminal tables are ``flowsync.cli.render``).
Data goes to stdout (or --output); every message (a note that a table was cut, a
warning that the data does not cover the previous window) to stderr, so
``flowsync report failures --format csv | ...`` pipes cleanly.
``--format`` defaults to a table on a terminal and to CSV when stdout is a
pipe or file. Parquet is binary: it goes to --output, or to stdout only when
stdout is not a terminal. Must not: hold SQL (that is ``flowsync.reports``), or
declare a report (that is ``flowsync.registry``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowsync import registry, reports
from flowsync.cli import formats, render
from flowsync.cli.common import LiveOption, WaitOption, err, errors, no_default_option, out
from flowsync.cli.report_options import (
    FORMATS,
    HEALTH_FORMATS,
    FormatOption,
    OutputOption,
    ReportOptions,
    report_command,
)
from flowsync.config import resolve_db_path
from flowsync.errors import ConfigError

if TYPE_CHECKING:  # Polars and DuckDB load inside the commands, so --help stays fast
    import polars as pl

    from flowsync.store import Store

# -- rendering --------------------------------------------------------------------


# The format an --output file's extension names, when --format is not given.
BY_EXTENSION = {
    ".csv": "csv",
    ".json": "json",
    ".parquet": "parquet",
    ".md": "markdown",
    ".markdown": "markdown",
    ".prom": "openmetrics",
}


def _choose_format(fmt: str | None, output: Path | None, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt is None:
        named = BY_EXTENSION.get(output.suffix.lower()) if output is not None else None
        if named in allowed:  # (failures.parquet: Parquet, not CSV under that name)
            return str(named)
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


def check_output(path: Path, option: str = "--output") -> None:
    """Refuse, before anything is written, an output file ``write_atomic`` would refuse: a
    DuckDB database, a directory, a folder that does not exist or cannot be written. A
    command with two (``--html`` and ``--output``) checks both first, so that a bad second
    one does not leave the first one written."""
    from flowsync.store.files import check_not_a_database

    check_not_a_database(path, option)  # a slip for --db would lose the history
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; name a file in it.")
    if path.exists() and not path.is_file():
        return  # /dev/stdout, a pipe: written to as it is
    folder = Path(os.path.realpath(path)).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        reason = "No such file or directory" if not folder.is_dir() else "Permission denied"
        raise ConfigError(f"Cannot write {option} {path}: {reason}. Choose a writable path.")


def write_atomic(path: Path, data: bytes, option: str = "--output") -> None:
    """Write to a temporary file beside ``path``, then rename: a reader (node_exporter's
    textfile collector, a browser) sees the old file or the new one, never half of one.
    A link is followed (the file it names is replaced, not the link); what is not a file
    (``/dev/null``, ``/dev/stdout``, a pipe) is written to as it is, never replaced."""
    check_output(path, option)
    if path.exists() and not path.is_file():  # followed as given: /dev/stdout, /dev/fd/N
        try:
            with path.open("wb") as f:
                f.write(data)
        except OSError as e:
            raise ConfigError(
                f"Cannot write {option} {path}: {e.strerror}. Choose a writable path."
            ) from e
        return
    path = Path(os.path.realpath(path))  # a link: the file it names is replaced, not the link
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
            fitted = render.readable_table(frame, report, ids=ids, width=out.width, title=title)
        else:
            headers, rows = formats.text_rows(frame)
            fitted = render.result_table(
                headers, rows, formats.numeric_columns(frame), width=out.width, title=title
            )
        out.print(fitted.table)
        _say_what_was_cut(fitted, "--format line" if report is None else "--format markdown")
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


def _say_what_was_cut(fitted: render.Fitted, whole: str) -> None:
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
            f"{'; '.join(notes)} to fit {out.width} columns: {whole} shows every value whole.",
            highlight=False,
            markup=False,
        )


def write(data: bytes, output: Path | None, what: str) -> None:
    if output is not None:
        write_atomic(output, data)
        err.print(f"wrote {what} to {output}", highlight=False, markup=False)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


DbsOption = Annotated[
    list[str] | None,
    no_default_option(
        "--db",
        help="DuckDB file. Default: $FLOWSYNC_DB, else ./flowsync.duckdb. Repeat to query several "
        "files together (NAME=PATH names a source; every table and view gets a source column).",
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
        no_default_option("--file", help="Read the SQL from this file.", metavar="FILE"),
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


def run_report(spec: registry.Report, opts: ReportOptions, own: dict[str, Any]) -> None:
    """Every ``flowsync report NAME``: parse, one call to ``flowsync.report``, render."""
    from flowsync import operations

    health = spec.query is None
    with errors():
        # --html alone writes only the page; with --format (or --output) the data too
        wants_data = opts.html is None or opts.fmt is not None or opts.output is not None
        allowed = HEALTH_FORMATS if health else FORMATS
        chosen = _choose_format(opts.fmt, opts.output, allowed) if wants_data else None
        for path, option in ((opts.html, "--html"), (opts.output, "--output")):
            if path is not None:
                check_output(path, option)
        done = operations.report(
            resolve_db_path(opts.db),
            spec.name,
            since=opts.since,
            include_deleted=opts.include_deleted,
            flow=opts.flow,
            deployment=opts.deployment,
            tag=opts.tag,
            state=opts.state,
            live=opts.live,
            wait=opts.wait,
            html=opts.html is not None,
            **own,
        )
        window = done.window.describe()
        if done.warning is not None and chosen != "openmetrics":  # cron mails a job's stderr
            err.print(f"warning: {done.warning}", highlight=False, markup=False)
        if opts.html is not None and done.page is not None:
            write_atomic(opts.html, done.page.encode(), "--html")
            what = "the health page (" if health else f"{done.title} ({done.frame.height} rows, "
            err.print(f"wrote {what}{window}) to {opts.html}", highlight=False, markup=False)
        if chosen is None:
            return
        if health and done.health is not None and chosen in ("openmetrics", "table"):
            if chosen == "openmetrics":
                from flowsync import openmetrics

                write(openmetrics.render(done.health).encode(), opts.output, "OpenMetrics")
            else:
                out.print(render.headline_table(done.health.headline, f"Health, {window}"))
            return
        emit(
            done.frame,
            chosen,
            opts.output,
            title=f"{done.title}, {window}",
            report=None if health else spec.name,
            ids=opts.ids,
        )


for _spec in registry.REPORTS.values():
    report_app.command(_spec.name)(report_command(_spec, run_report))
