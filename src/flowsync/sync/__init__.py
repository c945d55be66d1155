"""Syncing one Prefect API into the DuckDB file.

    pull.py      the order of a pull and its ``sync_runs`` record; ``RunReader``
    catalog.py   flows and deployments
    runs.py      flow runs: full reconciliation, incremental pull, re-read by id
    cursor.py    where the runs' events window starts, and whether the server still holds it
    context.py   what a pull carries (client, store, options, progress, counters)

Where a pull writes rows: ``flowsync.store.synced_tables``; its cursors and
log: ``flowsync.store.sync_log``. Must not: print or import httpx/duckdb.
"""

from flowsync.progress import NullProgress, Progress
from flowsync.sync.context import PullOptions
from flowsync.sync.cursor import events_cover, pulled_from
from flowsync.sync.pull import PullResult, RunReader, pull

__all__ = [
    "NullProgress",
    "Progress",
    "PullOptions",
    "PullResult",
    "RunReader",
    "events_cover",
    "pull",
    "pulled_from",
]
