"""flowsync: Prefect run history in DuckDB, with reports and bulk cleanup policies.

The library does what the commands do, one call each (``flowsync.operations``):

    flowsync.pull(db, api=ApiSettings, options=None) -> Pulled
    flowsync.plan(db, policy, refresh=None, live=False) -> Plan
    flowsync.apply(db, policy, api=ApiSettings, confirm=None, progress=None) -> Applied
    flowsync.report(db, name, since=None, by=None, **options) -> Reported (.frame: Polars)
    flowsync.status(db=None, wait=0.0) -> Status (.summary: what `status --json` prints)
    flowsync.operations.export(db, dest, fmt="parquet", since=None) -> Exported
      (``flowsync.export`` is the module that writes the files)
    flowsync.connect(db) -> a read-only DuckDB connection to the latest snapshot

``import flowsync`` stays light: these load on first use, so duckdb and httpx
are imported only when one is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "apply", "connect", "plan", "pull", "report", "status"]

if TYPE_CHECKING:
    from flowsync.operations import apply, plan, pull, report, status
    from flowsync.store.notebook import connect


def __getattr__(name: str) -> Any:
    if name == "connect":
        from flowsync.store.notebook import connect

        return connect
    if name in ("pull", "plan", "apply", "report", "status"):
        from flowsync import operations

        return getattr(operations, name)
    raise AttributeError(f"module 'flowsync' has no attribute {name!r}")
