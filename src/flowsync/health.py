"""The health figures: everything the health page and the OpenMetrics file show.

Owns: choosing which report figures answer the on-call questions (what is
failing, why, since when, what is slow or late) for one window, and bundling
them. Every figure comes from ``flowsync.reports``, i.e. from the macros and
views of ``sql/``; nothing here computes one. Must not: print, write files or
render (``report_html`` and ``openmetrics`` do).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowsync import reports
from flowsync.errors import NewerFileWarning, StoreError

if TYPE_CHECKING:
    import polars as pl

    from flowsync.store import Store

TOP = 10
# Windows up to this long chart runs and failure rate per UTC hour, longer ones per UTC day.
HOURLY_UP_TO = timedelta(hours=48)
# The heatmap shows a window's last this many UTC days (a quarter), its rows' totals too.
HEAT_DAYS = 93


@dataclass(frozen=True)
class Health:
    window: reports.Window
    include_deleted: bool
    headline: dict[
        str, Any
    ]  # one row: failure_rates, duration_percentiles, lateness over everything
    daily: pl.DataFrame  # failure_rates per UTC day (run_day), or per UTC hour (run_hour)
    heatmap: pl.DataFrame  # failure_rates per UTC day x deployment, over ``heat_window``
    heat_rows: pl.DataFrame  # failure_rates per deployment over ``heat_window``, most failed first
    deployments: pl.DataFrame  # failure_rates per deployment, with the previous window
    signatures: pl.DataFrame  # error_signatures
    unresolved: pl.DataFrame  # unresolved_failures
    durations: pl.DataFrame  # duration_percentiles per deployment, with the trend
    lateness: pl.DataFrame  # lateness per deployment
    last_pull: (
        datetime | None
    )  # the latest successful pull, from the live sync log if it could be read
    now: pl.DataFrame  # runs_now per deployment: running, waiting and late right now
    history_start: datetime | None  # the earliest run in the file (all history begins there)
    bucket: str = "day"  # what a row of ``daily`` covers: "day", or "hour" for short windows
    late_after: float = 60.0  # seconds past its expected start a run counts late (``lateness``)
    ui: str | None = None  # the Prefect UI the runs link to (None: the API URL tells none)

    @property
    def previous_uncovered(self) -> timedelta | None:
        """How much of the previous window has no data (see ``reports.previous_uncovered``)."""
        return reports.previous_uncovered(self.window, self.history_start)

    @property
    def heat_window(self) -> reports.Window:
        return heat_window(self.window)

    @property
    def window_seconds(self) -> float | None:
        """The window's length; all history counts from the earliest run, not from 1970."""
        start = self.window.since or self.history_start
        return None if start is None else max((self.window.until - start).total_seconds(), 0.0)


def heat_window(window: reports.Window) -> reports.Window:
    """The part of ``window`` the heatmap shows: its last ``HEAT_DAYS`` UTC days."""
    first_day = window.last_instant.date() - timedelta(days=HEAT_DAYS - 1)
    start = datetime.combine(first_day, time(), tzinfo=timezone.utc)
    since = start if window.since is None or window.since < start else window.since
    return reports.Window(since, window.until)


def live_last_pull(db: Path) -> datetime | None:
    """When the latest successful pull finished, from the live file's sync log.

    A pull that changes nothing publishes no snapshot, so a snapshot's own sync log
    stops at the last pull that changed something: on a quiet server a freshness
    alert would fire although every pull succeeds. The live file is opened read-only
    for one query; while a pull holds it (or it cannot be read) this gives None and
    the snapshot's figure stands."""
    from flowsync.store import Store, locks

    try:
        with warnings.catch_warnings():
            # A newer file: the figures' own reader has said so; one timestamp read here adds
            # nothing to that warning but a second line (cron mails stderr).
            warnings.simplefilter("ignore", NewerFileWarning)
            with Store.reader(db, live=True, lock_context=locks.LIVE_ONLY) as live:
                return reports.last_pull(live)
    except StoreError:
        return None


def collect(
    store: Store,
    window: reports.Window,
    *,
    include_deleted: bool = False,
    late_after: float = 60.0,
    live_db: Path | None = None,
) -> Health:
    """The figures of ``window`` from ``store``; ``live_db``: the live file whose sync log
    says when the last pull succeeded (see ``live_last_pull``)."""
    last_pull = reports.last_pull(store)
    live = live_last_pull(live_db) if live_db is not None else None
    if live is not None and (last_pull is None or live > last_pull):
        last_pull = live
    failures_all = reports.failures(store, "all", window, include_deleted=include_deleted)
    durations_all = reports.durations(
        store, "all", window, include_deleted=include_deleted, trend=True
    )
    late_all = reports.late(
        store, "all", window, late_after=late_after, include_deleted=include_deleted
    )
    signatures = reports.errors(store, window, include_deleted=include_deleted)
    unresolved = reports.unresolved(store)
    headline: dict[str, Any] = {}
    for frame in (failures_all, durations_all, late_all):
        # No run in the window: a count is 0 (as OpenMetrics says), a rate or a duration none.
        headline.update(
            frame.row(0, named=True)
            if frame.height
            else {c: 0 if kind.is_integer() else None for c, kind in frame.schema.items()}
        )
    headline.update(failures_all.row(0, named=True) if failures_all.height else {})
    headline["signatures"] = signatures.height
    headline["unresolved_deployments"] = unresolved.height
    headline["since"], headline["until"] = window.since, window.until
    hourly = window.since is not None and window.until - window.since <= HOURLY_UP_TO
    heat = heat_window(window)
    deployments = reports.failures(store, "deployment", window, include_deleted=include_deleted)
    return Health(
        window=window,
        include_deleted=include_deleted,
        headline=headline,
        daily=(
            reports.failure_rate_hourly(store, window, include_deleted=include_deleted)
            if hourly
            else reports.failure_rate_daily(
                store, window, by_deployment=False, include_deleted=include_deleted
            )
        ),
        bucket="hour" if hourly else "day",
        late_after=late_after,
        heatmap=reports.failure_rate_daily(
            store, heat, by_deployment=True, include_deleted=include_deleted
        ),
        heat_rows=(
            deployments
            if heat == window
            else reports.failures(store, "deployment", heat, include_deleted=include_deleted)
        ),
        deployments=deployments,
        signatures=signatures,
        unresolved=unresolved,
        durations=reports.durations(
            store, "deployment", window, include_deleted=include_deleted, trend=True
        ),
        lateness=reports.late(
            store, "deployment", window, late_after=late_after, include_deleted=include_deleted
        ),
        last_pull=last_pull,
        ui=reports.ui_base(store),
        now=reports.runs_now(store, late_after=late_after),
        history_start=reports.history_start(store, include_deleted=include_deleted),
    )


def headline_frame(health: Health) -> pl.DataFrame:
    """The headline as a one-row frame (the machine formats of ``report health``)."""
    import polars as pl

    return pl.DataFrame([health.headline])
