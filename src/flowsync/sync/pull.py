"""The pull: bring the local DuckDB file up to date with one Prefect API.

Owns: the order of a pull (check the server, flows, deployments, flow runs,
views) and its record in ``sync_runs``. Each step commits as it goes, and the
cursors only move in the transaction that commits the rows they cover, so a
pull killed at any moment resumes cleanly. Must not: print (progress goes
through the ``Progress`` it is given) or import httpx/duckdb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flowsync import views
from flowsync.api import PrefectClient
from flowsync.api.pagination import parse_ts
from flowsync.errors import FlowsyncError
from flowsync.store import Store, sync_log, synced_tables
from flowsync.store.tables import DEPLOYMENTS, FLOWS
from flowsync.sync import catalog, identity, runs
from flowsync.sync.context import NullProgress, Progress, PullContext, PullOptions


@dataclass
class PullResult:
    pull_id: int
    mode: str
    reason: str
    seconds: float
    requests: int
    retries: int
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    moved: identity.Moved | None = None  # the file followed its server to a new URL

    @property
    def inserted(self) -> int:
        return sum(t["inserted"] for t in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(t["updated"] for t in self.tables.values())

    @property
    def marked_deleted(self) -> int:
        return sum(t["marked_deleted"] for t in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "pull_id": self.pull_id,
            "mode": self.mode,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "retries": self.retries,
            "inserted": self.inserted,
            "updated": self.updated,
            "marked_deleted": self.marked_deleted,
            "tables": self.tables,
            "moved": self.moved.to_json() if self.moved else None,
        }


def pull(
    client: PrefectClient,
    store: Store,
    options: PullOptions | None = None,
    progress: Progress | None = None,
) -> PullResult:
    options = options or PullOptions()
    progress = progress or NullProgress()
    began = time.monotonic()
    server_start = client.check()
    url = client.settings.display_url
    moved = identity.bind(client, store)
    if moved is not None:
        progress.message(moved.describe())
    with store.transaction():
        sync_log.abandon_stale_runs(store)
        pull_id = sync_log.start_sync_run(store, url)
    ctx = PullContext(client, store, options, progress, pull_id, server_start)
    mode, reason = "incremental", ""
    try:
        with store.memory_guard():  # under the memory cap, reads can run out too: one clear error
            store.budget_memory(synced_tables.count_all(store, "flow_runs"), fixed_mb=options.memory_limit_mb)
            catalog.sync_collection(ctx, FLOWS)
            catalog.sync_collection(ctx, DEPLOYMENTS)
            why_full = runs.needs_full(ctx)
            if why_full:
                mode, reason = "full", why_full
                runs.full_pass(ctx)
            else:
                cursor = parse_ts(sync_log.get_state(store, runs.CURSOR))
                runs.incremental(ctx, cursor - options.overlap)
                with store.transaction():
                    sync_log.set_state(store, runs.CURSOR, server_start.isoformat())
            views.rebuild(store)
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        message = str(e) if isinstance(e, FlowsyncError) else f"{type(e).__name__}: {e}"
        try:
            with store.transaction():
                sync_log.finish_sync_run(
                    store, pull_id, status=status, mode=mode, error=message[:2000], **_totals(ctx)
                )
        except Exception:  # the original error matters more than the bookkeeping
            pass
        raise
    result = PullResult(
        pull_id=pull_id,
        mode=mode,
        reason=reason,
        seconds=time.monotonic() - began,
        requests=client.requests,
        retries=client.retries,
        tables={
            name: {"inserted": c.inserted, "updated": c.updated, "marked_deleted": c.marked_deleted}
            for name, c in ctx.counters.items()
        },
        moved=moved,
    )
    with store.transaction():
        sync_log.finish_sync_run(
            store, pull_id, status="ok", mode=mode, details=result.to_json(), **_totals(ctx)
        )
    return result


def _totals(ctx: PullContext) -> dict[str, int]:
    return {
        "inserted": sum(c.inserted for c in ctx.counters.values()),
        "updated": sum(c.updated for c in ctx.counters.values()),
        "marked_deleted": sum(c.marked_deleted for c in ctx.counters.values()),
        "requests": ctx.client.requests,
        "retries": ctx.client.retries,
    }


def refresh_runs(client: PrefectClient, store: Store, ids: list[str]) -> dict[str, int]:
    """Re-read these flow runs by id: update the ones that exist, mark the rest deleted.

    For callers that changed runs on the server (policy apply) and want the file
    to show it without a full pull. Returns counts: found, marked_deleted.
    """
    with store.transaction():
        pull_id = sync_log.start_sync_run(store, client.settings.display_url)
    ctx = PullContext(client, store, PullOptions(), NullProgress(), pull_id, client.server_now())
    found = runs.check_ids(ctx, ids)
    c = ctx.counter("flow_runs")
    with store.transaction():
        sync_log.finish_sync_run(store, pull_id, status="ok", mode="refresh", **_totals(ctx))
    return {"found": len(found), "marked_deleted": c.marked_deleted, "updated": c.updated}
