"""``flowsync export``: the tables as day-partitioned Parquet for other tools."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer

from flowsync.cli.common import (
    DbOption,
    JsonOption,
    LiveOption,
    WaitOption,
    err,
    errors,
    make_progress,
    no_default_option,
    print_json,
    quiet_option,
)
from flowsync.config import resolve_db_path
from flowsync.since import parse_since


def export_cmd(
    dest: Annotated[
        str,
        typer.Argument(
            metavar="DIR",
            help="Directory to write (created if missing), or an object-storage URL: s3://bucket/prefix, gs://..., az://...",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="Output format; only parquet for now.")
    ] = "parquet",
    db: DbOption = None,
    tables: Annotated[
        list[str] | None,
        no_default_option(
            "--tables",
            help="Table to export (repeat or comma-separate). Default: flows, deployments, flow_runs.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        no_default_option(
            "--since",
            help="Rewrite only partitions with rows synced or deleted since then: 30min, 12h, 7d, 2026-11-01, an ISO time, or all (the same forms as report --since).",
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace an export written from another file or server (or any export, from a file never pulled): a full export, without --since or --tables; partitions this file does not have are deleted.",
        ),
    ] = False,
    wait: WaitOption = 0.0,
    live: LiveOption = False,
    json_out: JsonOption = False,
    quiet: Annotated[bool, quiet_option("summary")] = False,
) -> None:
    """Write flows, deployments and flow runs as Parquet, partitioned by day (hive style).

    Flow runs go to DIR/flow_runs/date=YYYY-MM-DD/part-0.parquet by the UTC day
    of expected_start_time (created if unset); flows and deployments to one
    file each. Each partition
    is replaced atomically, so re-running never duplicates rows and readers
    never see half a partition. Runs deleted on the server are included, with
    deleted_at set. DIR/_flowsync_manifest.json lists every file and its rows.
    To s3:// (gs://, az://) each file is one object PUT and the manifest goes
    last; credentials come from the environment or your cloud profile
    (pip install 'flowsync[s3]'). An export of another file or server already
    at DIR is refused, nothing written; --replace takes it over.

    Example: flowsync export --format parquet exports/ --db runs.duckdb --since 2d
    """
    from flowsync import export, operations  # with pyarrow and DuckDB: loaded only when exporting

    with errors():
        names = [t.strip() for item in tables or [] for t in item.split(",") if t.strip()]
        cutoff = parse_since(since, datetime.now(timezone.utc))
        path = resolve_db_path(db)
        with make_progress(quiet or json_out) as progress:
            exported = operations.export(
                path,
                dest,
                fmt=fmt,
                tables=None if tables is None else names,
                since=cutoff,
                live=live,
                wait=wait,
                replace=replace,
                progress=progress,
            )
    result, uploaded = exported.result, exported.uploaded
    summary = {"db": str(path), **result.to_json()}
    if uploaded is not None:
        summary.update(
            dir=dest, manifest=f"{dest.rstrip('/')}/{export.MANIFEST}", upload=uploaded.to_json()
        )
    if json_out:
        print_json(summary)
    elif not quiet:
        err.print(
            f"exported {result.rows_written:,} rows in {result.files_written} files from {path} to {dest}",
            highlight=False,
            markup=False,
        )
