"""Syncing the small collections: flows and deployments.

Owns: one incremental walk per collection (newest ``updated`` first, stopping
at the cursor), a count check that falls back to a full listing, a full listing
at least once per staleness window (``LISTED_EVERY``), and marking rows the
server no longer has. Must not: touch flow runs.
"""

from __future__ import annotations

from datetime import datetime

from flowsync.api.pagination import iso, offset_pages, pages_by_id, parse_ts
from flowsync.api.reads import server_time
from flowsync.store import sync_log, synced_tables
from flowsync.store.tables import TableSpec
from flowsync.sync.context import PullContext

# Some changes leave a flow's or deployment's ``updated`` where it was (a schedule paused
# or edited: a row of another table on the server; a work pool renamed), so the walk by
# ``updated`` misses them past its first page. The whole collection is listed again once
# its last full listing is older than this share of the staleness window: every row is
# then at most that window old, as runs are (the rolling re-read).
LISTED_EVERY = 0.75


def sync_collection(ctx: PullContext, spec: TableSpec, *, whole: bool = False) -> None:
    """Bring one collection up to date: walked by ``updated`` down to its cursor, or listed
    whole (``whole``: a pull reconciling everything; ``--full``; the first time; once a
    ``LISTED_EVERY`` share of the staleness window)."""
    resource = spec.name
    key, listed_key = f"{resource}.cursor", f"{resource}.listed_at"
    cursor = sync_log.get_state(ctx.store, key)
    listed = sync_log.get_state(ctx.store, listed_key)
    started = synced_tables.now_utc()
    ctx.progress.phase(resource)
    seen: set[str] = set()
    complete = False
    if (
        cursor is None
        or whole
        or ctx.options.full
        or listed is None
        or started - parse_ts(listed) >= ctx.options.staleness * LISTED_EVERY
    ):
        complete = _walk(ctx, spec, "CREATED_DESC", None, seen)
    else:
        since = parse_ts(cursor) - ctx.options.overlap
        complete = _walk(ctx, spec, "UPDATED_DESC", since, seen)
        if not complete and ctx.client.count(resource) != synced_tables.count_live(
            ctx.store, resource
        ):
            complete = _walk(ctx, spec, "CREATED_DESC", None, seen)
    if complete:
        _mark_missing(ctx, spec, seen)
    with ctx.store.transaction():
        sync_log.set_state(ctx.store, key, iso(ctx.server_start))
        if complete:  # (a walk by ``updated`` that read every page listed it all too)
            sync_log.set_state(ctx.store, listed_key, iso(started))


def _walk(
    ctx: PullContext, spec: TableSpec, sort: str, stop_before: datetime | None, seen: set[str]
) -> bool:
    """Page through the collection; True when every page was read."""
    for page in offset_pages(ctx.client, spec.name, {"sort": sort}, ctx.options.page_size):
        ctx.progress.advance(ctx.write_pages(spec, [page]))
        seen.update(str(o["id"]) for o in page.rows)
        if stop_before is not None and any(
            o.get("updated")
            and server_time(o["updated"], f"POST /{spec.name}/filter: an updated") < stop_before
            for o in page.rows
        ):
            # A short page is the last one: the listing is complete all the same.
            return len(page) < ctx.options.page_size
    return True


def _mark_missing(ctx: PullContext, spec: TableSpec, seen: set[str]) -> None:
    """Rows not in a complete listing: re-check by id (the listing may have raced), then mark."""
    missing = [i for i in synced_tables.live_ids(ctx.store, spec.name) if i not in seen]
    for chunk, found in pages_by_id(ctx.client, spec.name, missing, ctx.options.page_size):
        ctx.write_pages(spec, [found])
        still = {str(o["id"]) for o in found.rows}
        ctx.mark_deleted(spec.name, [x for x in chunk if x not in still])
