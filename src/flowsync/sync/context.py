"""What one pull carries around: client, store, options, progress, counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from flowsync.api import PrefectClient
from flowsync.store import Store, writes
from flowsync.store.tables import TableSpec


class Progress(Protocol):
    """How a pull reports progress; the CLI renders it, tests ignore it."""

    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int) -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class PullOptions:
    full: bool = False
    # Events reach the server's store a few seconds late, and a state's timestamp
    # comes from the client that proposed it: re-read this much before the cursor.
    overlap: timedelta = timedelta(minutes=10)
    # Older cursors than this fall back to a full reconciliation (events live 7 days by default).
    events_horizon: timedelta = timedelta(days=6)
    concurrency: int = 2
    page_size: int = 200
    segment_rows: int = 2000


@dataclass
class Counters:
    inserted: int = 0
    updated: int = 0
    marked_deleted: int = 0

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

    def write_page(self, spec: TableSpec, objects: list[dict[str, Any]], state: dict[str, Any] | None = None) -> int:
        """Upsert one page, and (in the same transaction) the cursor that covers it."""
        frame = spec.batch(objects)
        with self.store.transaction():
            ins, upd = writes.upsert(self.store, spec, frame, pull_id=self.pull_id)
            for key, value in (state or {}).items():
                writes.set_state(self.store, key, value)
        self.counter(spec.name).add(ins, upd)
        return frame.height

    def mark_deleted(self, table: str, ids: list[str]) -> int:
        with self.store.transaction():
            n = writes.mark_deleted(self.store, table, ids)
        self.counter(table).marked_deleted += n
        return n
