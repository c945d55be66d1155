"""What one pull carries around: client, store, options, progress, counters."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flowsync import config, present
from flowsync.api import Page, PrefectClient
from flowsync.api.pagination import PAGE_SIZE
from flowsync.errors import ConfigError
from flowsync.progress import Progress
from flowsync.store import Store, sync_log, synced_tables
from flowsync.store.tables import TableSpec

WRITE_ROWS = 2000  # rows a commit of pulled pages: one upsert, one transaction


@dataclass(frozen=True)
class PullOptions:
    full: bool = False
    # Events reach the server's store a few seconds late, and a state's timestamp
    # comes from the client that proposed it: re-read this much before the cursor.
    overlap: timedelta = timedelta(minutes=config.PULL_OVERLAP_MINUTES)
    # Used only when the server does not say how long it keeps events and holds none from before
    # the cursor: an older cursor falls back to a full reconciliation (Prefect's default is 7 days).
    events_horizon: timedelta = timedelta(days=config.PULL_EVENTS_HORIZON_DAYS)
    # Edits emit no event (PATCH: tags, name, parameters...): every live run is re-read at least
    # this often, spread over the scheduled pulls (the rolling re-read).
    staleness: timedelta = timedelta(hours=config.PULL_STALENESS_HOURS)
    concurrency: int = config.PULL_CONCURRENCY
    page_size: int = PAGE_SIZE
    segment_rows: int = 5000
    # Totals that match are trusted between full count checks; this often, compare
    # per-bucket counts anyway (catches lost events). `verify` forces it.
    verify_every: timedelta = timedelta(hours=24)
    verify: bool = False
    # DuckDB memory cap in MB for this pull: None sizes it from the history, 0 leaves DuckDB's default.
    memory_limit_mb: int | None = None

    def __post_init__(self) -> None:
        """Refuse what ``flowsync pull``'s options refuse before anything is opened or
        recorded: a span a pull cannot use (a huge one would fail mid-pull as an
        OverflowError, after its sync_runs row was written), a concurrency outside 1..8, a
        negative memory cap (DuckDB would read it as none)."""
        config.check_number(
            "--concurrency",
            self.concurrency,
            whole=True,
            low=config.PULL_CONCURRENCY_MIN,
            high=config.PULL_CONCURRENCY_MAX,
        )
        config.check_memory_limit(self.memory_limit_mb)
        # Not command-line options: a page of none would be asked for forever.
        config.check_number(
            "PullOptions.page_size", self.page_size, whole=True, low=1, high=PAGE_SIZE
        )
        config.check_number("PullOptions.segment_rows", self.segment_rows, whole=True, low=1)
        for name in ("full", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"PullOptions.{name} {getattr(self, name)!r} is not True or False."
                )
        for name in ("verify_every", "overlap", "staleness", "events_horizon"):
            if not isinstance(getattr(self, name), timedelta):
                raise ConfigError(
                    f"PullOptions.{name} {getattr(self, name)!r} is not a span of time: pass a "
                    "datetime.timedelta."
                )
        if self.verify_every < timedelta(0):
            raise ConfigError(
                f"PullOptions.verify_every {self.verify_every!r} is out of range: use a span "
                "of zero or more."
            )
        for name, least in (
            ("overlap", timedelta(0)),
            ("staleness", _POSITIVE),
            ("events_horizon", _POSITIVE),
        ):
            flag, value = "--" + name.replace("_", "-"), getattr(self, name)
            if not least <= value <= SPAN_MAX[flag]:
                raise ConfigError(
                    f"{flag} of {value!r} is out of range (PullOptions.{name}): use from "
                    f"{'0' if not least else 'more than 0'} up to "
                    f"{present.duration(SPAN_MAX[flag].total_seconds())}."
                )


# The most each span of a pull may be: past them a span means nothing to a pull, and a
# huge one is no date (OverflowError).
SPAN_MAX = {
    "--overlap": timedelta(minutes=config.PULL_OVERLAP_MAX_MINUTES),
    "--staleness": timedelta(hours=config.PULL_STALENESS_MAX_HOURS),
    "--events-horizon": timedelta(days=config.PULL_EVENTS_HORIZON_MAX_DAYS),
}
_POSITIVE = timedelta(microseconds=1)


def span(flag: str, value: float, unit: str) -> timedelta:
    """``value`` ``unit`` (minutes, hours, days) as a span for ``PullOptions``; one that no
    span holds (``inf``, ``nan``, ``1e12`` days) is past ``SPAN_MAX``, which it refuses."""
    try:
        return timedelta(**{unit: value})
    except (OverflowError, ValueError):
        most = SPAN_MAX[flag] / timedelta(**{unit: 1})
        raise ConfigError(
            f"{flag} {value:g} is out of range: use at most {most:g} {unit}."
        ) from None


@dataclass
class Counters:
    inserted: int = 0
    updated: int = 0
    marked_deleted: int = 0
    reread: int = 0  # live runs re-read because their last read was getting old

    def add(self, inserted: int, updated: int) -> None:
        self.inserted += inserted
        self.updated += updated


@dataclass
class PullContext:
    client: PrefectClient
    store: Store
    options: PullOptions
    progress: Progress
    pull_id: int
    server_start: datetime
    counters: dict[str, Counters] = field(default_factory=dict)

    def counter(self, table: str) -> Counters:
        return self.counters.setdefault(table, Counters())

    def write_pages(
        self, spec: TableSpec, pages: Sequence[Page], state: dict[str, Any] | None = None
    ) -> int:
        """Upsert pages, with the cursor state that covers them in the last transaction: one
        transaction, or one per ``synced_tables.by_size`` part of runs with large parameters
        (DuckDB's memory cap), so a cursor never runs ahead of the rows it covers.

        Returns how many of the rows this pull had not written yet (what progress counts:
        keyset paging re-reads a page's boundary rows).
        """
        parts = list(synced_tables.by_size(pages)) or [[]]
        fresh = 0
        for k, part in enumerate(parts):
            with self.store.transaction():
                written = synced_tables.upsert_pages(self.store, spec, part, pull_id=self.pull_id)
                if k == len(parts) - 1:
                    for key, value in (state or {}).items():
                        sync_log.set_state(self.store, key, value)
            self.counter(spec.name).add(written.inserted, written.updated)
            fresh += written.fresh
        return fresh

    def buffer(self, spec: TableSpec) -> PageBuffer:
        return PageBuffer(self, spec)

    def mark_deleted(self, table: str, ids: list[str]) -> int:
        with self.store.transaction():
            n = synced_tables.mark_deleted(self.store, table, ids)
        self.counter(table).marked_deleted += n
        return n


class PageBuffer:
    """Collects pages and writes them ~2,000 rows (or 2 s) at a time: one upsert, one commit.

    ``state`` given to ``add`` is written with the flush that covers the page, so
    a cursor never runs ahead of the rows it covers.
    """

    def __init__(
        self, ctx: PullContext, spec: TableSpec, rows: int = WRITE_ROWS, seconds: float = 2.0
    ) -> None:
        self.ctx, self.spec, self.max_rows, self.max_seconds = ctx, spec, rows, seconds
        self.pages: list[Page] = []
        self.rows = 0
        self.since = time.monotonic()
        self.state: dict[str, Any] | None = None

    def add(self, page: Page, state: dict[str, Any] | None = None) -> None:
        self.pages.append(page)
        self.rows += len(page.rows)
        self.state = state or self.state
        if self.rows >= self.max_rows or time.monotonic() - self.since > self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if self.pages or self.state:
            n = self.ctx.write_pages(self.spec, self.pages, self.state)
            self.ctx.progress.advance(n)
        self.pages, self.rows, self.since = [], 0, time.monotonic()
