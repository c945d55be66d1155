"""Syncing flow runs: a resumable full reconciliation and a cheap incremental pull.

The API has no ``updated`` filter for flow runs, so an incremental pull asks
three other questions (see docs/sync-design.md):

1. Which runs changed state since the cursor? ``/events/count-by/resource``
   answers with every flow-run id that has a state event, in one request.
2. Were runs deleted? Deletions emit no event, but they change the total:
   ``/flow_runs/count`` against the local live count.
3. When the totals differ (or once a day, or with ``--verify``): one
   ``/flow_runs/history`` request gives the server's run counts per
   expected-start bucket and state type; buckets that differ from the local
   counts are narrowed with finer histograms, re-read by keyset, and their
   missing runs checked by id before they are marked deleted.

The full reconciliation walks every run by keyset on ``expected_start_time``
in segments (2 in flight), commits each page with the position that covers
it, and resumes from those positions after a crash. Runs the walk did not see
are checked by id before they are marked deleted.

Must not: open DuckDB or HTTP directly (store and api own those).
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

from flowsync.api import Page
from flowsync.api.pagination import (
    EPOCH,
    FILTER_START,
    Position,
    chunks,
    in_order,
    iso,
    keyset_run_pages,
    offset_pages,
    pages_by_id,
    parse_ts,
)
from flowsync.api.reads import server_time
from flowsync.errors import ApiError, UnavailableError
from flowsync.since import HISTORY_START
from flowsync.store import sync_log, synced_tables
from flowsync.store.tables import FLOW_RUNS
from flowsync.sync import cursor
from flowsync.sync.context import WRITE_ROWS, PullContext
from flowsync.sync.cursor import CURSOR, EVENTS_CURSOR

FULL_PASS = "flow_runs.full_pass"
VERIFIED = "flow_runs.verified_at"
# When the last pull that looked for replaced scheduled runs (``rescheduled``) began, on the
# server's clock (the events cursor that pull left, not its Date: deployments' ``updated`` is
# the server's clock, and a proxy's Date ahead of it skipped the ones changed right after):
# a cursor of its own, since an older flowsync's pull moves ``CURSOR`` without that step (the
# deployments it saw changed would never be looked at again).
RESCHEDULED = "flow_runs.rescheduled_cursor"
# Each deployment's change stamp (``synced_tables.deployment_stamps``) when ``rescheduled``
# last looked at it, or a full pass read its runs: the step looks at the deployments whose
# stamp differs, by no clock. (A time cursor stuck where the server's newest state event
# is, on a quiet server, had every pull list again the scheduled runs of every deployment
# changed since: 509 requests and 208 s a pull at a million runs with 10 deployments of
# ~10,000 scheduled runs each.) ``RESCHEDULED`` is still kept, for older flowsyncs.
LOOKED = "flow_runs.rescheduled_looked"
# The deployments' change stamps when a full pass began ({"pass_id", "stamps"}): a pass
# resumed by a later pull looks at the ones that changed since (their scheduled runs may
# have been replaced behind a walk that was already past them). Kept apart from the pass
# (``FULL_PASS`` is written again with every page the walk commits).
PASS_STAMPS = "flow_runs.full_pass_stamps"
# The server's history query costs ~3 ms per bucket on SQLite: few buckets, refined where they differ.
PLAN_BUCKETS = 100
# How far past the server's now the bucketed plans and checks reach: a run expected later
# (one scheduled in 9999) lies in the open-ended last part, read and counted there. Prefect's
# /flow_runs/history fails (500) on a range that ends near the last date there is.
PLAN_HORIZON = timedelta(days=100 * 365)
VERIFY_BUCKETS = 100
REREAD_ROWS = 2000  # a differing range this small is re-read; a larger one is narrowed first
# The history query reads every run in its range (PostgreSQL at a million runs: ~6 us a run,
# 5.7 s for the whole range in one request). Asked in parts of about this many runs, no
# history request grows with the server.
HISTORY_PART_ROWS = 100_000


# -- full reconciliation --------------------------------------------------------


def needs_full(ctx: PullContext) -> str | None:
    """Why this pull must reconcile everything, or None for an incremental pull."""
    if sync_log.get_state(ctx.store, FULL_PASS):
        return "resuming an interrupted full pull"
    if ctx.options.full:
        return "--full"
    pulled = sync_log.get_state(ctx.store, CURSOR)
    if pulled is None:
        return "first pull"
    overlap = ctx.options.overlap
    since = cursor.window_start(ctx.store, ctx.server_start) - overlap
    return events_gap(ctx, since, parse_ts(pulled) - overlap)


def events_gap(ctx: PullContext, since: datetime, read_to: datetime) -> str | None:
    """Why the server's state events may no longer cover [since, now], or None when they do
    (``cursor.events_cover`` with the pull's clock and ``--events-horizon``), or went back in
    time since the last pull (``cursor.events_lost``: a restore)."""
    try:
        return cursor.events_cover(
            ctx.client, since, ctx.server_start, ctx.options.events_horizon, read_to=read_to
        ) or cursor.events_lost(ctx.client, ctx.store, ctx.server_start)
    except UnavailableError:
        raise  # the server has an events API and did not answer (429, 5xx): nothing known
    except ApiError:
        return None  # no events API: the incremental pull falls back to re-reading unfinished runs


def history_in_parts(
    ctx: PullContext, start: datetime, interval: float, buckets: int, weights: list[float]
) -> list[dict[str, Any]]:
    """``buckets`` history buckets from ``start``, asked in parts of about HISTORY_PART_ROWS runs.

    ``weights`` are the runs expected per bucket (local counts, or the total spread
    evenly). Parts start on the whole's bucket edges, so the answer is the one a
    single request would give.
    """
    parts: list[tuple[int, int]] = []
    first, acc = 0, 0.0
    for i in range(buckets):
        if i > first and acc + weights[i] > HISTORY_PART_ROWS:
            parts.append((first, i))
            first, acc = i, 0.0
        acc += weights[i]
    parts.append((first, buckets))

    def part(edges: tuple[int, int]) -> list[dict[str, Any]]:
        a, b = edges
        answer = ctx.client.flow_run_history(
            start + timedelta(seconds=interval * a),
            start + timedelta(seconds=interval * b),
            interval,
        )
        return answer[: b - a]

    # The parts are independent: asked ``concurrency`` at a time, as the walk's pages are.
    answers = in_order(part, parts, ctx.options.concurrency)
    return [bucket for _, answer in answers for bucket in answer]


def plan_segments(ctx: PullContext, total: int) -> list[dict[str, Any]]:
    """Split the expected-start range into segments of about ``segment_rows`` runs."""
    client = ctx.client
    ends = []
    for sort in ("EXPECTED_START_TIME_ASC", "EXPECTED_START_TIME_DESC"):
        page = client.filter(
            "flow_runs",
            {
                "sort": sort,
                "limit": 1,
                "offset": 0,
                "flow_runs": {"expected_start_time": {"after_": iso(HISTORY_START)}},
            },
        )
        ends.append(server_time(page[0].get("expected_start_time"), FILTER_START) if page else None)
    lo, hi = ends
    if lo is None or hi is None:
        return [{"lo": None, "hi": None, "pos": None, "done": False}]
    horizon = ctx.server_start + PLAN_HORIZON
    lo, hi = min(lo, horizon), min(hi, horizon)
    start = lo - timedelta(seconds=1)
    interval = max(1.0, math.ceil((hi - start).total_seconds() / PLAN_BUCKETS + 1))
    buckets = math.ceil(((hi + timedelta(seconds=interval)) - start).total_seconds() / interval)
    history = history_in_parts(ctx, start, interval, buckets, [total / buckets] * buckets)
    cuts: list[datetime] = []
    acc = 0
    for bucket in history:
        acc += sum(int(s.get("count_runs", 0)) for s in bucket.get("states", []))
        if acc >= ctx.options.segment_rows:
            cuts.append(
                server_time(bucket.get("interval_end"), "POST /flow_runs/history: an interval_end")
            )
            acc = 0
    bounds: list[datetime | None] = [None, *cuts, None]
    return [
        {"lo": iso(a) if a else None, "hi": iso(b) if b else None, "pos": None, "done": False}
        for a, b in itertools.pairwise(bounds)
    ]


def full_pass(ctx: PullContext) -> None:
    """Read every run (resuming a pass a stopped pull began), then leave the cursors at the
    pass's start: what changed during it is the next pull's to ask for.

    A resumed pass also asks the state events since the pass began (the runs read before
    the stop may have changed state since) and re-reads the runs read longer ago than the
    staleness window allows (``rolling_reread``): a pass resumed hours later is as current
    as an incremental pull. (A pass read in one pull has nothing due, unless it took most
    of the window.)"""
    state = sync_log.get_state(ctx.store, FULL_PASS)
    resumed = bool(state)
    total = ctx.client.count("flow_runs")
    if not state:
        newest = cursor.newest_event(ctx.client, ctx.server_start)
        state = {
            "pass_id": ctx.pull_id,
            "started": iso(ctx.server_start),
            # the events cursor the pass leaves (None: the server held no state event)
            "events": iso(newest) if newest else None,
            "segments": plan_segments(ctx, total),
        }
        began = {"pass_id": ctx.pull_id, "stamps": synced_tables.deployment_stamps(ctx.store)}
        with ctx.store.transaction():
            sync_log.set_state(ctx.store, FULL_PASS, state)
            sync_log.set_state(ctx.store, PASS_STAMPS, began)
    ctx.progress.phase("flow_runs", total)
    _walk_segments(ctx, state)
    _reconcile_unseen(ctx, int(state["pass_id"]))
    _null_start_runs(ctx)
    events = state.get("events")  # a pass begun by an older flowsync has none
    start = cursor.bounded(
        parse_ts(events) if events else None, parse_ts(state["started"]), ctx.server_start
    )
    newest = None
    if resumed:
        try:
            behind, newest = state_events(ctx, start - ctx.options.overlap)
        except UnavailableError:
            raise  # throttled or down, not without events: fail, the pass stays to resume
        except ApiError:
            behind = []  # no events API: the re-read below and the next pulls' checks cover it
        if behind:
            ctx.progress.message(f"{len(behind)} runs changed state since the pass began")
            check_ids(ctx, behind)
    stamps = synced_tables.deployment_stamps(ctx.store)
    _look_at(ctx, _changed_since_the_pass_began(ctx, state, stamps))
    rolling_reread(ctx)
    if resumed:
        # Runs deleted (no event) or inserted by the scheduler in the parts walked before the
        # stop: the totals and the history tell, as after an incremental pull.
        verify_counts(ctx, force=True)
    events_cursor = cursor.next_cursor(start, newest, ctx.server_start)
    with ctx.store.transaction():
        sync_log.set_state(ctx.store, CURSOR, state["started"])
        sync_log.set_state(ctx.store, EVENTS_CURSOR, events_cursor)
        held = [t for t in (newest, parse_ts(events) if events else None) if t is not None]
        cursor.record_newest(ctx.store, max(held, default=None), replace=True)
        sync_log.set_state(ctx.store, VERIFIED, state["started"])
        sync_log.set_state(ctx.store, RESCHEDULED, events_cursor)
        sync_log.set_state(ctx.store, LOOKED, stamps)
        sync_log.delete_state(ctx.store, FULL_PASS)
        sync_log.delete_state(ctx.store, PASS_STAMPS)


def _changed_since_the_pass_began(
    ctx: PullContext, state: dict[str, Any], stamps: dict[str, str]
) -> list[str]:
    """The deployments whose stamp differs from the one they had when the pass began: none
    for a pass read in one pull (the catalog is read before it); for a resumed one, those
    paused, resumed or deployed again while it was stopped (their scheduled runs replaced,
    no event, the walk maybe past them). Every deployment when the pass's stamps are not
    known (a pass an older flowsync began)."""
    began = sync_log.get_state(ctx.store, PASS_STAMPS)
    if isinstance(began, dict) and began.get("pass_id") == state["pass_id"]:
        known = began.get("stamps")
        if isinstance(known, dict):
            return sorted(d for d, stamp in stamps.items() if known.get(d) != stamp)
    return sorted(stamps)


_DONE = object()


def _walk_segments(ctx: PullContext, state: dict[str, Any]) -> None:
    """Fetch segments in worker threads; write pages here, in order of arrival."""
    segments = state["segments"]
    todo = [i for i, s in enumerate(segments) if not s["done"]]
    if not todo:
        return
    pages: queue.Queue[Any] = queue.Queue(maxsize=2 * ctx.options.concurrency)
    stop = threading.Event()
    claim = iter(todo)
    claim_lock = threading.Lock()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            while not stop.is_set():
                with claim_lock:
                    idx = next(claim, None)
                if idx is None:
                    break
                seg = segments[idx]
                lo = parse_ts(seg["lo"]) if seg["lo"] else None
                hi = parse_ts(seg["hi"]) if seg["hi"] else None
                walk = keyset_run_pages(
                    ctx.client,
                    lo,
                    hi,
                    start=Position.from_json(seg["pos"]),
                    page_size=ctx.options.page_size,
                )
                for page, nxt in walk:
                    if stop.is_set() or not put((idx, page, nxt)):
                        return
        except BaseException as e:  # handed to the writer thread, which re-raises it
            put(e)
        finally:
            put(_DONE)

    workers = max(1, min(ctx.options.concurrency, len(todo)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowsync-fetch") as pool:
        for _ in range(workers):
            pool.submit(worker)
        finished = 0
        buffer = ctx.buffer(FLOW_RUNS)
        try:
            while finished < workers:
                item = pages.get()
                if item is _DONE:
                    finished += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                idx, page, nxt = item
                seg = segments[idx]
                seg["pos"] = nxt.to_json() if nxt else None
                seg["done"] = nxt is None
                # `state` is updated in place; it is written with the flush that covers this page.
                buffer.add(page, {FULL_PASS: state})
        finally:
            stop.set()
            buffer.flush()  # what arrived intact is kept, even when a fetch failed


def _reconcile_unseen(ctx: PullContext, pass_id: int) -> None:
    """Live local runs the walk did not see: refresh the ones that exist, mark the rest."""
    unseen = synced_tables.live_ids(ctx.store, "flow_runs", not_seen_since=pass_id)
    if unseen:
        ctx.progress.message(f"checking {len(unseen)} runs not seen in the full walk")
    check_ids(ctx, unseen)


def check_ids(ctx: PullContext, ids: Iterable[str], *, advance: bool = False) -> set[str]:
    """Fetch these runs by id: upsert the ones that exist, mark the rest deleted.

    ``concurrency`` requests in flight, as the walk's pages; written ~2,000 rows a
    commit (what arrived intact is written even when a later request fails).
    ``advance``: the progress advances by each request's runs as they are written.
    """
    found: set[str] = set()
    pages: list[Page] = []
    gone: list[str] = []
    waiting = 0  # runs in ``pages`` and ``gone``, not written yet

    def write() -> None:
        nonlocal waiting
        if pages:
            ctx.write_pages(FLOW_RUNS, pages)
        if gone:
            ctx.mark_deleted("flow_runs", gone)
        if advance and waiting:
            ctx.progress.advance(waiting)
        pages.clear()
        gone.clear()
        waiting = 0

    by_id = pages_by_id(
        ctx.client, "flow_runs", ids, ctx.options.page_size, in_flight=ctx.options.concurrency
    )
    try:
        for chunk, page in by_id:
            got = {str(o["id"]) for o in page.rows}
            found |= got
            pages.append(page)
            gone.extend(i for i in chunk if i not in got)
            waiting += len(chunk)
            if waiting >= WRITE_ROWS:
                write()
    finally:
        by_id.close()  # the requests not yet sent are dropped before anything is written
        write()
    return found


def _null_start_runs(ctx: PullContext) -> None:
    """Runs without an expected start are invisible to the keyset walk; list them if any exist."""
    with_start = ctx.client.count(
        "flow_runs", {"flow_runs": {"expected_start_time": {"after_": iso(HISTORY_START)}}}
    )
    total = ctx.client.count("flow_runs")
    if total <= with_start:
        return
    ctx.progress.message(
        f"{total - with_start} runs have no expected start time; listing all runs to find them"
    )
    for page in offset_pages(ctx.client, "flow_runs", {"sort": "ID_DESC"}, ctx.options.page_size):
        nulls = [o for o in page.rows if o.get("expected_start_time") is None]
        if nulls:
            ctx.write_pages(FLOW_RUNS, [Page.from_rows(nulls)])


# -- incremental ------------------------------------------------------------------


def incremental(ctx: PullContext, since: datetime) -> datetime | None:
    """Changes since ``since``: state events, then the count check for everything else.

    Returns when the newest state event the server answered with occurred (None: none, or
    no events API): where the next pull's events window may start (``cursor``)."""
    ctx.progress.phase("flow_runs")
    force = ctx.options.verify
    try:
        behind, newest = state_events(ctx, since)
    except UnavailableError:
        raise  # throttled or down, not without events: fail, the cursor stays where it was
    except ApiError as e:
        # Servers without the events API: refresh every run that can still change,
        # and compare bucket counts every time.
        ctx.progress.message(f"events unavailable ({e}); refreshing unfinished runs instead")
        behind, newest = synced_tables.unfinished_run_ids(ctx.store), None
        force = True
    if behind:
        ctx.progress.message(f"{len(behind)} runs changed state since {iso(since)}")
        found = check_ids(ctx, behind)
        ctx.progress.advance(len(found))
    rescheduled(ctx)
    verify_counts(ctx, force=force)
    rolling_reread(ctx)
    return newest


# A request of ``rescheduled`` names at most this many of the file's runs to leave out (about
# 80 kB; a server binds each id as a parameter, and SQLite and asyncpg take ~32,000).
EXCLUDED_IDS = 2000


def rescheduled(ctx: PullContext) -> None:
    """Read the scheduled runs that replaced others in the deployments changed since the
    last pull.

    A deployment updated, paused or deployed again has Prefect delete its scheduled runs,
    and its scheduler inserts them again (new ids, the same times and state): neither
    emits a state event, and the total and every history bucket stay as they were, so
    neither the count check nor the per-bucket check would see it. The server's SCHEDULED
    runs of those deployments that the file does not hold as such are listed (one request
    for up to 200 deployments and ``EXCLUDED_IDS`` of the file's runs: none when nothing
    was replaced, since Prefect before 3.6.11 moves a deployment's ``updated`` on every
    worker poll) and written; when there are some, the file's that the server no longer
    has are found by one count and then checked by id (the rest are the rolling
    re-read's). Nothing is asked when no deployment changed (the catalog has just been
    read). The deployments whose change stamp differs from the one this step last looked
    at (``LOOKED``) are looked at; in a file without stamps, those changed since the last
    pull that took the step (``RESCHEDULED``), or every deployment when none did (only
    older flowsyncs pulled it), once."""
    if sync_log.get_state(ctx.store, CURSOR) is None:
        return
    stamps = synced_tables.deployment_stamps(ctx.store)
    looked = sync_log.get_state(ctx.store, LOOKED)
    if isinstance(looked, dict):
        changed = sorted(d for d, stamp in stamps.items() if looked.get(d) != stamp)
    else:
        through = sync_log.get_state(ctx.store, RESCHEDULED)
        since = parse_ts(through) - ctx.options.overlap if through else EPOCH
        changed = synced_tables.deployments_updated_since(ctx.store, since)
    _look_at(ctx, changed)
    if looked != stamps:
        with ctx.store.transaction():
            sync_log.set_state(ctx.store, LOOKED, stamps)


def _look_at(ctx: PullContext, changed: list[str]) -> None:
    """``rescheduled``'s reads for the deployments ``changed``."""
    held = synced_tables.scheduled_runs_of(ctx.store, changed)
    # Up to 200 deployments a request, naming at most EXCLUDED_IDS of the file's runs (a
    # deployment holding more alone).
    groups = (
        part
        for some in chunks(changed)
        for part in synced_tables.packed(some, [len(held.get(d, ())) for d in some], EXCLUDED_IDS)
    )
    for deployments in groups:
        known = [i for d in deployments for i in held.get(d, ())]
        runs: dict[str, Any] = {
            "deployment_id": {"any_": deployments},
            "state": {"type": {"any_": ["SCHEDULED"]}},
        }
        # One deployment holding more (a backfill): all its scheduled runs are listed.
        excluded = known if len(known) <= EXCLUDED_IDS else []
        if excluded:
            runs["id"] = {"not_any_": excluded}
        elif known:  # the long case (a request per 200 runs): said, not silent
            ctx.progress.message(
                f"a changed deployment holds {len(known):,} scheduled runs, more than a request "
                f"leaves out ({EXCLUDED_IDS:,}): listing them all to find any replaced"
            )
        listed: dict[str, dict[str, Any]] = {}
        body = {"flow_runs": runs, "sort": "ID_DESC"}
        for page in offset_pages(ctx.client, "flow_runs", body, ctx.options.page_size):
            listed.update((str(o["id"]), o) for o in page.rows)
        if not listed:
            continue
        # New runs: the scheduler may have inserted them in place of the file's. Those are
        # checked before the new ones are written: a pull stopped in between lists the new
        # ones again (the file would hold them as SCHEDULED, and none would be listed).
        if not excluded:
            check_ids(ctx, sorted(set(known) - set(listed)))
        elif ctx.client.count("flow_runs", {"flow_runs": {"id": {"any_": known}}}) < len(known):
            check_ids(ctx, known)
        live = synced_tables.live_ids_among(ctx.store, "flow_runs", list(listed))
        fresh = [o for i, o in listed.items() if i not in live]
        if fresh:
            ctx.write_pages(FLOW_RUNS, [Page.from_rows(fresh)])


def state_events(ctx: PullContext, since: datetime) -> tuple[list[str], datetime | None]:
    """The runs with a state event since ``since`` that the file does not hold yet, and when
    the newest of those events occurred (None: none). ``ApiError``: no events API."""
    changed = ctx.client.changed_flow_runs(since, ctx.server_start + cursor.DATE_LAG_MAX)
    # Skip runs whose local row already holds their latest state (typically
    # re-read by the previous pull inside the overlap window).
    behind = synced_tables.runs_behind(ctx.store, changed, ctx.server_start)
    return behind, max(changed.values(), default=None)


def rolling_reread(ctx: PullContext) -> int:
    """Re-read the live runs that are due, so none is ever older than the staleness window.

    Edits emit no event, so only a read finds them. A run is due once its last
    read (``synced_at``) is 75-95% of the window old, the fraction fixed per run
    by its id: after a full pull the re-reads spread over a fifth of the window
    instead of all falling due at once, and every pull takes its share. By id,
    200 per request (a keyset range would re-read runs that are not due).
    Returns how many runs were re-read.
    """
    due = synced_tables.due_for_reread(ctx.store, ctx.options.staleness)
    if due:
        ctx.progress.message(
            f"re-reading {len(due)} runs last read more than "
            f"{cursor.in_words(ctx.options.staleness * 0.75)} ago"
        )
        # Its own phase with a total: after a long pause it is most of the pull (minutes at
        # a million runs), and the rate and ETA say so.
        ctx.progress.phase("re-read", len(due))
        check_ids(ctx, due, advance=True)
        ctx.counter("flow_runs").reread += len(due)
    return len(due)


def verify_counts(ctx: PullContext, *, force: bool = False) -> None:
    """Make sure nothing else differs: totals first, per-bucket counts when needed."""
    server_total = ctx.client.count("flow_runs")
    local_total = synced_tables.count_live(ctx.store, "flow_runs")
    last = sync_log.get_state(ctx.store, VERIFIED)
    due = last is None or ctx.server_start - parse_ts(last) > ctx.options.verify_every
    if server_total == local_total and not (force or due) and _scheduled_agree(ctx):
        return
    lo, hi, _local_nulls = synced_tables.run_time_bounds(ctx.store)
    if lo is None or hi is None:
        if server_total:
            reconcile_range(ctx, None, None)
            _null_start_runs(ctx)
    else:
        lo, hi = lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)
        horizon = ctx.server_start + PLAN_HORIZON  # later runs: counted outside the window
        lo, hi = min(lo, horizon), min(hi, horizon)
        # Bucket edges at half seconds, away from the whole-second times seeded runs often share.
        start = (
            lo.replace(minute=0, second=0, microsecond=0)
            - timedelta(hours=1)
            + timedelta(seconds=0.5)
        )
        end = hi + timedelta(hours=1)
        in_server, in_local = _reconcile_window(ctx, start, end, depth=0)
        if server_total - in_server != local_total - in_local:
            ctx.progress.message("runs outside the known time range differ; re-reading both ends")
            reconcile_range(ctx, None, start)
            reconcile_range(ctx, end, None)
            _null_start_runs(ctx)
    with ctx.store.transaction():
        sync_log.set_state(ctx.store, VERIFIED, iso(ctx.server_start))


def _scheduled_agree(ctx: PullContext) -> bool:
    """Whether the server holds as many SCHEDULED runs as the file: one count, asked when
    the file knows a deployment with an active schedule (else True, nothing asked).

    The scheduler inserts runs without a state event, so a run it added while another was
    deleted (Prefect's flow-run vacuum deletes old runs every hour, a steady state's
    scheduler adds one an hour) leaves the total where it was. Its SCHEDULED runs are not:
    the deleted run is a finished one, or the inserted one is not in the file."""
    if not synced_tables.any_active_schedule(ctx.store):
        return True
    scheduled = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    server = ctx.client.count("flow_runs", scheduled)
    return server == synced_tables.count_live_in_state(ctx.store, "SCHEDULED")


def _reconcile_window(
    ctx: PullContext, start: datetime, end: datetime, depth: int
) -> tuple[int, int]:
    """Compare counts per (bucket, state type) in [start, end); fix what differs.

    Returns the server's and the local totals in the window (before fixing).
    """
    interval = float(max(1, math.ceil((end - start).total_seconds() / VERIFY_BUCKETS)))
    buckets = math.ceil((end - start).total_seconds() / interval)
    local = synced_tables.local_histogram(ctx.store, start, interval, buckets)
    weights = [0.0] * buckets
    for (b, _), n in local.items():
        weights[b] += n
    history = history_in_parts(ctx, start, interval, buckets, weights)
    server: dict[tuple[int, str], int] = {}
    for i, bucket in enumerate(history):
        for st in bucket.get("states", []):
            key = (i, st.get("state_type") or "")
            server[key] = server.get(key, 0) + int(st["count_runs"])
    differing = sorted(
        {b for b, st in set(server) | set(local) if server.get((b, st)) != local.get((b, st))}
    )
    if differing and depth == 0:
        ctx.progress.message(
            f"{len(differing)} of {len(history)} time buckets differ from the server; re-reading them"
        )
    for b_lo, b_hi in _merge(differing):
        lo_t = start + timedelta(seconds=interval * b_lo)
        hi_t = start + timedelta(seconds=interval * (b_hi + 1))
        size = max(
            sum(n for (b, _), n in server.items() if b_lo <= b <= b_hi),
            sum(n for (b, _), n in local.items() if b_lo <= b <= b_hi),
        )
        if size > REREAD_ROWS and interval > 1 and depth < 3:
            _reconcile_window(ctx, lo_t, hi_t, depth + 1)
        else:
            reconcile_range(ctx, lo_t, hi_t)
    return sum(server.values()), sum(local.values())


def _merge(buckets: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for b in buckets:
        if ranges and b == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((b, b))
    return ranges


def reconcile_range(ctx: PullContext, lo: datetime | None, hi: datetime | None) -> None:
    """Make local runs with expected start in [lo, hi] equal the server's."""
    seen: set[str] = set()
    buffer = ctx.buffer(FLOW_RUNS)
    for page, _ in keyset_run_pages(ctx.client, lo, hi, page_size=ctx.options.page_size):
        buffer.add(page)
        seen.update(str(o["id"]) for o in page.rows)
    buffer.flush()
    local = synced_tables.live_run_ids_between(ctx.store, lo, hi)
    check_ids(ctx, sorted(local - seen))
