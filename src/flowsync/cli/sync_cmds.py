"""``flowsync pull`` and ``flowsync status``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flowsync.cli.common import (
    ApiKeyOption,
    ApiUrlOption,
    DbOption,
    JsonOption,
    MaxRequestsOption,
    MemoryLimitOption,
    WaitOption,
    err,
    errors,
    make_progress,
    out,
    print_json,
    quiet_option,
)
from flowsync.config import (
    PULL_CONCURRENCY,
    PULL_CONCURRENCY_MAX,
    PULL_CONCURRENCY_MIN,
    PULL_EVENTS_HORIZON_DAYS,
    PULL_OVERLAP_MINUTES,
    PULL_STALENESS_HOURS,
    resolve_api,
    resolve_db_path,
)


def pull_cmd(
    db: DbOption = None,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="Re-read every run from the server (a full reconciliation)."),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Compare per-bucket run counts with the server even when totals match (done daily anyway).",
        ),
    ] = False,
    wait: WaitOption = 0.0,
    concurrency: Annotated[
        int,
        typer.Option(
            help="Requests in flight at once: pages, history parts, re-reads by id (more than 2 slows the server).",
            min=PULL_CONCURRENCY_MIN,
            max=PULL_CONCURRENCY_MAX,
        ),
    ] = PULL_CONCURRENCY,
    overlap: Annotated[
        float,
        typer.Option(
            help="Minutes of events re-read before the last cursor (late events, client clocks).",
            min=0,
        ),
    ] = PULL_OVERLAP_MINUTES,
    events_horizon: Annotated[
        float,
        typer.Option(
            help="Days of events to assume the server keeps when it holds none from before the cursor and does not say (Prefect Cloud); an older cursor triggers a full reconciliation.",
            min=0.01,
        ),
    ] = PULL_EVENTS_HORIZON_DAYS,
    staleness: Annotated[
        float,
        typer.Option(
            "--staleness",
            envvar="FLOWSYNC_STALENESS_HOURS",
            help="Hours: every live run is re-read at least this often (edits such as tags or names emit no event), spread over the pulls. Env: FLOWSYNC_STALENESS_HOURS.",
            min=0.0001,
        ),
    ] = PULL_STALENESS_HOURS,
    memory_limit: MemoryLimitOption = None,
    max_requests_per_minute: MaxRequestsOption = None,
    json_out: JsonOption = False,
    quiet: Annotated[bool, quiet_option("progress output")] = False,
) -> None:
    """Sync flows, deployments and flow runs from a Prefect API into the DuckDB file.

    The first pull reads everything; later pulls read only what changed (state
    events, plus a per-bucket count check that finds deleted runs), and re-read
    the share of live runs due so that none is older than --staleness (edits
    emit no event). Runs deleted on the server stay in the file with deleted_at set.

    Example: flowsync pull --api-url http://127.0.0.1:4200/api --db runs.duckdb
    """
    # Imported here so `--help` and shell completion stay fast.
    from flowsync import operations
    from flowsync.sync import PullOptions
    from flowsync.sync.context import span

    with errors():
        settings = resolve_api(api_url, api_key, max_requests_per_minute=max_requests_per_minute)
        path = resolve_db_path(db)
        options = PullOptions(
            full=full,
            verify=verify,
            concurrency=concurrency,
            overlap=span("--overlap", overlap, "minutes"),
            events_horizon=span("--events-horizon", events_horizon, "days"),
            staleness=span("--staleness", staleness, "hours"),
            memory_limit_mb=memory_limit,
        )
        progress = make_progress(quiet or json_out)
        with progress:
            pulled = operations.pull(
                path,
                api=settings,
                options=options,
                progress=progress,
                wait=wait,
                on_retry=progress.message,
            )
        result, published = pulled.result, pulled.snapshot
    if json_out:
        print_json(
            {
                "db": str(path),
                "api_url": settings.display_url,
                **result.to_json(),
                "snapshot": published.to_json(),
            }
        )
    elif not quiet:
        why = f" ({result.reason})" if result.reason else ""
        err.print(
            f"pulled from {settings.display_url} into {path}: {result.mode}{why}, "
            f"{result.inserted} new, {result.updated} updated, {result.marked_deleted} marked deleted, "
            f"{result.reread} re-read for staleness; "
            f"{result.requests} requests in {result.seconds:.1f}s; "
            + _budget_line(result.budget)
            + (
                f"published snapshot {published.snapshot.generation} in {published.seconds:.2f}s"
                if published.published
                else f"snapshot {published.snapshot.generation} unchanged"
            ),
            highlight=False,
            markup=False,
        )


def _budget_line(budget: dict[str, float | int] | None) -> str:
    if not budget:
        return ""
    held = (
        f"{budget['waits']} waited {budget['waited_seconds']:.1f}s"
        if budget["waits"]
        else "none waited"
    )
    return f"budget {budget['max_requests_per_minute']:g}/min: {held}; "


def status_cmd(
    db: DbOption = None,
    wait: WaitOption = 0.0,
    json_out: JsonOption = False,
) -> None:
    """Show what is in the DuckDB file: source API, last pull, row counts.

    Example: flowsync status --db runs.duckdb --json
    """
    from flowsync.operations import status

    with errors():
        shown = status(db, wait=wait)
    path, summary, writing = shown.path, shown.summary, shown.writing
    published, problem = shown.snapshot, shown.snapshot_problem
    if json_out:
        print_json(summary)
        return
    last = summary["last_pull"]
    source = summary["api_url"] or ("(a server it does not name)" if last else "(never pulled)")
    out.print(f"[bold]{escape(str(path))}[/]  from {escape(source)}", highlight=False)
    if writing is not None and published is not None:
        role = writing.holder_role
        who = (
            f"{'an' if role[:1] in 'aeiou' else 'a'} {role}"
            if role != "unknown"
            else "another process"
        )
        pid = f" (PID {writing.holder_pid})" if writing.holder_pid else ""
        out.print(
            f"{who}{pid} is writing the file now: below, the snapshot readers see "
            f"(published {published.published_at:%Y-%m-%d %H:%M:%S %Z})",
            highlight=False,
            markup=False,
        )
    server = summary["server"]
    if server:
        version = server.get("version")
        kind = "Prefect Cloud" if server.get("cloud") else "Prefect"
        said = f"{kind} {version}" if version else f"{kind} (version not stated)"
        bulk = "has" if server.get("bulk") else "lacks (before 3.6.16)"
        seen = str(server.get("seen_at", ""))[:19].replace("T", " ")
        out.print(
            f"server: {said}, {bulk} the bulk endpoints policies use; as of {seen} UTC",
            highlight=False,
            markup=False,
        )
    if last:
        out.print(
            f"last pull #{last['id']}: {last['status']} ({last['mode'] or '-'}) at {last['started_at']:%Y-%m-%d %H:%M:%S %Z}"
            + (f" — {last['error']}" if last["error"] else ""),
            highlight=False,
            markup=False,
        )
    if summary["last_successful_pull_at"]:
        out.print(
            f"last successful pull finished {summary['last_successful_pull_at']:%Y-%m-%d %H:%M:%S %Z}",
            highlight=False,
        )
    other = summary["last_apply"]
    if other:
        out.print(
            f"last apply or plan --refresh #{other['id']}: {other['status']} ({other['mode']}) at "
            f"{other['started_at']:%Y-%m-%d %H:%M:%S %Z}"
            + (f" — {other['error']}" if other["error"] else ""),
            highlight=False,
            markup=False,
        )
    oldest = summary["flow_runs"]["oldest_read_at"]
    if oldest is not None:
        out.print(f"oldest re-read of a live run: {oldest:%Y-%m-%d %H:%M:%S %Z}", highlight=False)
    if problem:
        out.print(
            f"readers cannot open the snapshot: {problem}; the next pull publishes a new one",
            highlight=False,
            markup=False,
        )
    elif published:
        out.print(
            f"readers see {published.describe()}",
            highlight=False,
        )
    table = Table("table", "live", "deleted on server")
    for name in ("flows", "deployments", "flow_runs"):
        table.add_row(name, f"{summary[name]['live']:,}", f"{summary[name]['deleted']:,}")
    out.print(table)
    if summary["flow_runs"]["by_state"]:
        states = Table("state", "runs")
        for state, n in summary["flow_runs"]["by_state"].items():
            states.add_row(escape(str(state)), f"{n:,}")
        out.print(states)
