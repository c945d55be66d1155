"""The pull: bring the local DuckDB file up to date with one Prefect API.

Owns: the order of a pull (check the server, flows, deployments, flow runs,
views) and its record in ``sync_runs``. Each step commits as it goes, and the
cursors only move in the transaction that commits the rows they cover, so a
pull killed at any moment resumes cleanly. Must not: print (progress goes
through the ``Progress`` it is given) or import httpx/duckdb.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flowsync import views
from flowsync.api import Page, PrefectClient
from flowsync.api.pagination import pages_by_id
from flowsync.errors import ApiError, FlowsyncError, SignalInterrupt
from flowsync.progress import NullProgress, Progress
from flowsync.store import Writer, signatures, sync_log, synced_tables
from flowsync.store.tables import DEPLOYMENTS, FLOW_RUNS, FLOWS
from flowsync.sync import catalog, cursor, identity, runs
from flowsync.sync.context import PullContext, PullOptions


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
    server: dict[str, Any] = field(default_factory=dict)  # version, cloud, bulk (Capabilities)
    budget: dict[str, Any] | None = None  # what --max-requests-per-minute held back
    # The file follows a new URL, or the server says another version or capabilities: a
    # change readers must see (plan's apply path, report links) though no row changed.
    server_changed: bool = False

    @property
    def inserted(self) -> int:
        return sum(t["inserted"] for t in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(t["updated"] for t in self.tables.values())

    @property
    def marked_deleted(self) -> int:
        return sum(t["marked_deleted"] for t in self.tables.values())

    @property
    def reread(self) -> int:
        return sum(t.get("reread", 0) for t in self.tables.values())

    @property
    def changed(self) -> bool:
        """Whether this pull wrote anything readers see (else the snapshot can stay)."""
        return bool(self.inserted or self.updated or self.marked_deleted or self.server_changed)

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
            "reread": self.reread,
            "tables": self.tables,
            "moved": self.moved.to_json() if self.moved else None,
            "server": self.server,
            "budget": self.budget,
            "server_changed": self.server_changed,
        }


NO_DATE = (
    "the server's answer has no readable Date header: this machine's clock stands in for the "
    "server's (the age of the last pull against the events retention, the daily check, the "
    "flows' and deployments' cursors; the runs' events window follows the events' own times)"
)

# Young objects Python's cyclic collector lets pile up before it looks, during a pull.
PULL_GC_THRESHOLD = 50_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Python's cyclic collector runs rarely inside the block (a pull); restored after.

    With the default threshold (700 new objects) it ran ~3,000 times in a 200,000-run
    pull, each time walking the pages queued and the batch being written (a run is five
    containers of ~40 references): ~10 us of a run's CPU. A pull makes no reference
    cycles of its own (the client breaks httpx's, ``api.session._unbind``), so its
    garbage still goes when its last reference does: the peak RSS is unchanged
    (BENCHMARKS.md, "Issue #24").
    """
    old = gc.get_threshold()
    if old[0]:  # 0: the collector is off by the caller's choice; leave it so
        gc.set_threshold(max(old[0], PULL_GC_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def pull(
    client: PrefectClient,
    store: Writer,
    options: PullOptions | None = None,
    progress: Progress | None = None,
) -> PullResult:
    options = options or PullOptions()
    progress = progress or NullProgress()
    began = time.monotonic()
    # First: a cap DuckDB cannot take (below what it already holds) is bad input, refused
    # before this pull writes anything (its record included).
    store.budget_memory(fixed_mb=options.memory_limit_mb)
    fresh = views.ensure_built(store)  # a new file: readable even if this first pull stops early
    url = client.settings.display_url
    moved: identity.Moved | None = None
    try:
        server_start = client.check()
        moved = identity.bind(client, store)
        caps = client.capabilities()
    except BaseException as e:
        # The server was not reached or refused us (stopped, 401, 5xx): recorded, so that
        # `status` and the metrics show the failing pulls of a schedule, not the last good one.
        # (A ConfigError, another server's file, is bad input: nothing is written.) One that
        # got as far as following its server to a new URL wrote that, whatever stopped it:
        # recorded too, not as "unreached", so the next pull publishes it.
        if isinstance(e, ApiError) or moved is not None:
            status, message = stopped_by(e)
            with contextlib.suppress(Exception), store.transaction():
                failed = sync_log.start_sync_run(
                    store, url, None if moved is None else "incremental"
                )
                sync_log.finish_sync_run(
                    store, failed, status=status, error=message[:2000], requests=client.requests
                )
        raise
    if moved is not None:
        progress.message(moved.describe())
    if server_start is None:
        server_start = synced_tables.now_utc()
        progress.message(NO_DATE)
    server_changed = identity.record_server(store, caps) or moved is not None
    with store.transaction():
        sync_log.abandon_stale_runs(store)
        pull_id = sync_log.start_sync_run(store, url)
    ctx = PullContext(client, store, options, progress, pull_id, server_start)
    mode, reason = "incremental", ""
    try:
        # Under the memory cap, reads can run out too: one clear error. One DuckDB thread:
        # a batch is too small for more to pay off (BENCHMARKS.md, "Client CPU per run").
        with store.memory_guard(), store.single_threaded(), fewer_collections():
            # Decided first, so that a pull stopped in the catalog is recorded as what it was.
            why_full = runs.needs_full(ctx)
            if why_full:
                mode, reason = "full", why_full
            # A pull that reconciles the runs lists the catalog whole too (a restored server's
            # flows and deployments are older than the cursor its walk stops at).
            catalog.sync_collection(ctx, FLOWS, whole=bool(why_full))
            catalog.sync_collection(ctx, DEPLOYMENTS, whole=bool(why_full))
            if why_full:
                runs.full_pass(ctx)
            else:
                # The events window starts at the events' own clock (``cursor``); the Date
                # at this pull's start is what the next pull counts the retention from.
                start = cursor.window_start(store, server_start)
                newest = runs.incremental(ctx, start - options.overlap)
                # ``RESCHEDULED``, the scheduled-runs step's time cursor before its stamps
                # (``runs.LOOKED``), is kept for older flowsyncs: the events cursor.
                events_cursor = cursor.next_cursor(start, newest, server_start)
                with store.transaction():
                    sync_log.set_state(store, cursor.CURSOR, server_start.isoformat())
                    sync_log.set_state(store, runs.RESCHEDULED, events_cursor)
                    sync_log.set_state(store, cursor.EVENTS_CURSOR, events_cursor)
                    cursor.record_newest(store, newest)
            runs_counter = ctx.counters.get(FLOW_RUNS.name)
            # Runs went: record the server's retention now, to tell aged-out from deleted.
            went = runs_counter is not None and runs_counter.marked_deleted
            if went and identity.record_retention(client, store) is None:
                progress.message(
                    "the server's settings did not answer (busy): its run retention, which "
                    "tells aged-out runs from deleted ones, stays as last recorded"
                )
            views.ensure_current(store, pull_id, force=options.full and not fresh, built_now=fresh)
            signatures.record_first_seen(store)
    except BaseException as e:
        status, message = stopped_by(e)
        try:
            with store.transaction():
                sync_log.finish_sync_run(
                    store, pull_id, status=status, mode=mode, error=message[:2000], **_totals(ctx)
                )
        except Exception:  # the original error matters more than the bookkeeping
            pass
        raise
    for table in (FLOWS, DEPLOYMENTS, FLOW_RUNS):  # every table in the summary, changed or not
        ctx.counter(table.name)
    result = PullResult(
        pull_id=pull_id,
        mode=mode,
        reason=reason,
        seconds=time.monotonic() - began,
        requests=client.requests,
        retries=client.retries,
        tables={
            name: {
                "inserted": c.inserted,
                "updated": c.updated,
                "marked_deleted": c.marked_deleted,
                "reread": c.reread,
            }
            for name, c in ctx.counters.items()
        },
        moved=moved,
        server=caps.to_json(),
        budget=client.budget.stats().to_json() if client.budget else None,
        server_changed=server_changed,
    )
    with store.transaction():
        sync_log.finish_sync_run(
            store, pull_id, status="ok", mode=mode, details=result.to_json(), **_totals(ctx)
        )
    return result


def stopped_by(e: BaseException) -> tuple[str, str]:
    """The ``sync_runs`` status and error of a pull (or an apply's reads) that ``e`` stopped."""
    if isinstance(e, SignalInterrupt):
        return "interrupted", f"stopped by {e.signal_name}; what was committed is kept"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", "stopped by SIGINT (Ctrl-C); what was committed is kept"
    return "failed", str(e) if isinstance(e, FlowsyncError) else f"{type(e).__name__}: {e}"


def _totals(ctx: PullContext) -> dict[str, int]:
    return {
        "inserted": sum(c.inserted for c in ctx.counters.values()),
        "updated": sum(c.updated for c in ctx.counters.values()),
        "marked_deleted": sum(c.marked_deleted for c in ctx.counters.values()),
        "requests": ctx.client.requests,
        "retries": ctx.client.retries,
    }


class RunReader:
    """Re-reads flow runs by id into the file, for a caller about to act on them (policy apply).

    The file must belong to the client's server (``identity.bind``, as for a
    pull), else ConfigError before anything is read or written. One
    ``sync_runs`` record covers every read of the session (mode ``mode``).
    Each ``read`` is one request per 200 ids: the runs found are upserted, the
    ones the server no longer has are marked deleted.
    """

    def __init__(self, client: PrefectClient, store: Writer, mode: str) -> None:
        # A run the server does not know is marked deleted: reading another server's
        # runs into this file would mark its whole history deleted. Same check as a pull.
        identity.bind(client, store)
        with store.transaction():
            pull_id = sync_log.start_sync_run(store, client.settings.display_url, mode)
        self.mode = mode
        self.requests = 0
        self.changed: list[str] = []  # ids the last read wrote or marked deleted
        self.answered_at = time.monotonic()  # when the last read's last page answered
        # The server clock is not needed for reads by id; ours only stamps the record.
        self.ctx = PullContext(
            client, store, PullOptions(), NullProgress(), pull_id, synced_tables.now_utc()
        )

    def read(
        self,
        ids: list[str],
        before_write: Callable[[list[str]], None] | None = None,
        stamps: Mapping[str, synced_tables.Stamp] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The server's current rows for ``ids`` (a missing id is gone from the server).

        Only rows that differ from the file are written: new, gone, or with
        another ``updated`` stamp (Prefect moves it on every write to a run through the
        API) or other ``UNSTAMPED`` values (columns the server's database changes without
        it: a subflow's parent set to NULL when the parent is deleted).
        ``before_write`` gets their ids first; ``changed`` holds them after.
        ``stamps``: the file's stamps of these runs (``plan.Decision.rows``),
        read when nothing has written them since: compared without a query.
        """
        found: dict[str, dict[str, Any]] = {}
        self.changed = []
        for chunk, page in self._counted(ids):
            got = {str(o["id"]): o for o in page.rows}
            found.update(got)
            differ = (
                synced_tables.differing_from(stamps, got)
                if stamps is not None
                else synced_tables.runs_differing(self.ctx.store, got)
            )
            gone = [r for r in chunk if r not in got]
            if before_write is not None and (differ or gone):
                before_write(differ + gone)
            if differ:
                keep = set(differ)
                self.ctx.write_pages(
                    FLOW_RUNS,
                    [
                        page
                        if len(keep) == len(got)
                        else Page.from_rows([o for k, o in got.items() if k in keep])
                    ],
                )
            if gone:
                self.ctx.mark_deleted("flow_runs", gone)
            self.changed += differ + gone
        return found

    def unchanged(self, rows: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether the server still shows each of these runs (id -> the row it sent before)
        as it did (``synced_tables.same_run``): read again, nothing written."""
        for chunk, page in self._counted(list(rows)):
            got = {str(o["id"]): o for o in page.rows}
            if not all(synced_tables.same_run(rows[i], got.get(i)) for i in chunk):
                return False
        return True

    def mark_read(self, ids: list[str]) -> None:
        """These runs (just read) count as read now in the file, unchanged ones too."""
        with self.ctx.store.transaction():
            synced_tables.mark_read(self.ctx.store, ids)

    def read_lookups(self, runs: Iterable[Mapping[str, Any]], tables: Iterable[str]) -> None:
        """The flows or deployments (``tables``) of these runs (rows as the server sent
        them) re-read by id into the file, the ones the server no longer has marked deleted:
        for a decision that joins them (a deployment paused or renamed since the pull emits
        no event)."""
        rows, wanted = list(runs), set(tables)
        for spec, key in ((FLOWS, "flow_id"), (DEPLOYMENTS, "deployment_id")):
            if spec.name not in wanted:
                continue
            ids = sorted({str(r[key]) for r in rows if r.get(key)})
            for chunk, page in pages_by_id(self.ctx.client, spec.name, ids):
                self.requests += 1
                self.answered_at = time.monotonic()
                self.ctx.write_pages(spec, [page])
                found = {str(o["id"]) for o in page.rows}
                gone = [i for i in chunk if i not in found]
                if gone:
                    self.ctx.mark_deleted(spec.name, gone)

    def _counted(self, ids: list[str]) -> Iterator[tuple[list[str], Page]]:
        for chunk, page in pages_by_id(self.ctx.client, "flow_runs", ids):
            self.requests += 1
            self.answered_at = time.monotonic()
            yield chunk, page

    def counts(self) -> dict[str, int]:
        c = self.ctx.counter("flow_runs")
        return {"updated": c.updated, "marked_deleted": c.marked_deleted}

    def finish(self, error: BaseException | None = None) -> None:
        """Close the session's ``sync_runs`` record: ok, or what ``error`` stopped it with."""
        status, message = stopped_by(error) if error is not None else ("ok", None)
        with self.ctx.store.transaction():
            sync_log.finish_sync_run(
                self.ctx.store,
                self.ctx.pull_id,
                status=status,
                mode=self.mode,
                error=message[:2000] if message else None,
                **_totals(self.ctx),
            )
