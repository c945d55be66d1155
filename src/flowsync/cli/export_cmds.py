"""``flowsync export``: the tables as day-partitioned Parquet for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowsync.cli.common import (
    DbOption,
    JsonOption,
    LiveOption,
    WaitOption,
    err,
    errors,
    print_json,
)
from flowsync.config import resolve_db_path


def export_cmd(
    out_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Directory to write (created if missing).", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="Output format; only parquet for now.")] = "parquet",
    db: DbOption = None,
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", help="Table to export (repeat or comma-separate). Default: flows, deployments, flow_runs.", show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Rewrite only partitions with rows synced or deleted since then: 7d, 12h, 2026-11-01, or an ISO time.", show_default=False),
    ] = None,
    wait: WaitOption = 0.0,
    live: LiveOption = False,
    json_out: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary; errors only (for cron).")] = False,
) -> None:
    """Write flows, deployments and flow runs as Parquet, partitioned by day (hive style).

    Flow runs go to DIR/flow_runs/date=YYYY-MM-DD/part-0.parquet by the UTC day
    of expected_start_time (created if unset); flows and deployments to one
    file each. Each partition
    is replaced atomically, so re-running never duplicates rows and readers
    never see half a partition. Runs deleted on the server are included, with
    deleted_at set. DIR/_flowsync_manifest.json lists every file and its rows.

    Example: flowsync export --format parquet exports/ --db runs.duckdb --since 2d
    """
    from flowsync import export  # with pyarrow and DuckDB: loaded only when exporting
    from flowsync.store.snapshot import open_for_reading

    with errors():
        names = [t.strip() for item in tables or [] for t in item.split(",") if t.strip()] or None
        export.check_request(out_dir, fmt, names)
        cutoff = export.parse_since(since) if since else None
        path = resolve_db_path(db)
        with open_for_reading(path, live=live, wait=wait) as store:
            result = export.export(store, out_dir, fmt=fmt, tables=names, since=cutoff)
    if json_out:
        print_json({"db": str(path), **result.to_json()})
    elif not quiet:
        err.print(
            f"exported {result.rows_written:,} rows in {result.files_written} files from {path} to {out_dir}",
            highlight=False,
        )
