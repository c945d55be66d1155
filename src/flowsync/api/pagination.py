"""Paging over the filter endpoints: offset pages, resumable keyset pages, pages by id.

Owns: the request bodies that walk a collection, the one id chunker (``chunks``,
``pages_by_id``) every re-read by id goes through, and ``in_order`` (requests in flight
together, answers in their order). Offset paging is kept for the small collections (flows, deployments); flow runs are walked by keyset on
``expected_start_time`` so that deletions of earlier rows cannot make a page
skip rows (offset paging does), with an offset walk only inside a run of more
than a page of rows sharing one timestamp, ordered by id there: the server has
no tie-breaker, and PostgreSQL returns ties in storage order, which changes
when a run changes state (SQLite keeps a row's rowid), so a walk ordered by the
shared timestamp alone skips runs (and each page of a tie starts at the last run read, so
one deleted before it makes no run skipped: ``_tie_page``). Must not: write anything.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from flowsync.api.client import PrefectClient
from flowsync.api.reads import PAGE_LIMIT, Page, server_time
from flowsync.since import HISTORY_START

PAGE_SIZE = PAGE_LIMIT  # the largest page the API serves
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


FILTER_START = "POST /flow_runs/filter: a run's expected_start_time"


def parse_ts(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def offset_pages(
    client: PrefectClient, resource: str, body: dict[str, Any], page_size: int = PAGE_SIZE
) -> Iterator[Page]:
    offset = 0
    while True:
        page = client.filter_page(resource, {**body, "limit": page_size, "offset": offset})
        if page:
            yield page
        if len(page) < page_size:
            return
        offset += len(page)


T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int = PAGE_SIZE) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``, in order."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def in_order(
    fetch: Callable[[T], R], items: Iterable[T], in_flight: int = 1
) -> Generator[tuple[T, R], None, None]:
    """Each item with ``fetch(item)``, in the items' order.

    ``in_flight`` > 1: that many calls at once, in worker threads; at most twice that many
    answers are asked ahead of the caller. When the caller stops (an error, a break), the
    calls not yet started are dropped; those already running finish and are discarded.
    """
    todo = iter(items)
    if in_flight <= 1:
        for item in todo:
            yield item, fetch(item)
        return
    ahead: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="flowsync-fetch") as pool:
        try:
            for item in itertools.islice(todo, 2 * in_flight):
                ahead.append((item, pool.submit(fetch, item)))
            while ahead:
                item, future = ahead.popleft()
                answer = future.result()
                for following in itertools.islice(todo, 1):
                    ahead.append((following, pool.submit(fetch, following)))
                yield item, answer
        finally:
            for _, future in ahead:
                future.cancel()


def pages_by_id(
    client: PrefectClient,
    resource: str,
    ids: Iterable[str],
    size: int = PAGE_SIZE,
    *,
    in_flight: int = 1,
) -> Generator[tuple[list[str], Page], None, None]:
    """Each chunk of ``ids`` with the page of those objects that still exist (one request each).

    The filter key equals the resource name (``flows``, ``deployments``, ``flow_runs``).
    ``in_flight``: requests at once, the pages still in the chunks' order (``in_order``).
    """

    def fetch(chunk: list[str]) -> Page:
        body = {resource: {"id": {"any_": chunk}}, "limit": len(chunk), "offset": 0}
        return client.filter_page(resource, body)

    return in_order(fetch, chunks(list(ids), min(size, PAGE_LIMIT)), in_flight)


@dataclass(frozen=True)
class Position:
    """Where a keyset walk resumes: the inclusive lower bound and, inside a tie, the offset.

    ``in_tie``: the walk is paging through runs that share ``after`` exactly,
    by id, ``tie`` rows in; ``last``: the id of the last run it read there (None:
    not known, a position an older flowsync stored). Positions stored before ties
    were ordered by id (``tie`` > 0 without ``in_tie``) restart their tie from its
    first row.
    """

    after: str
    tie: int = 0
    in_tie: bool = False
    last: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"after": self.after, "tie": self.tie, "in_tie": self.in_tie, "last": self.last}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Position | None:
        if not data:
            return None
        if "in_tie" not in data:
            return cls(str(data["after"]), 0, int(data.get("tie", 0)) > 0)
        last = data.get("last")
        return cls(
            str(data["after"]),
            int(data.get("tie", 0)),
            bool(data["in_tie"]),
            str(last) if last is not None else None,
        )


def _run_filter(after: str, before: str | None) -> dict[str, Any]:
    window: dict[str, Any] = {"after_": after}
    if before is not None:
        window["before_"] = before
    return {"flow_runs": {"expected_start_time": window}}


def _tie_page(client: PrefectClient, pos: Position, page_size: int) -> tuple[int, Page]:
    """The next page of a tie (runs on one timestamp, by id, newest id first) and its offset.

    Offsets move when runs before them go (deleted, or their expected start changed): the
    runs not read yet move up, and the first of them would fall before the next offset,
    never read (a first pull never knew it, so no check by id finds it). So the page starts
    one row early, at the last run read; when that row is no longer there, runs before it
    went, and the page steps back a page at a time until it starts at or before that run
    (the rows read again cost an upsert of rows already held)."""
    body = {**_run_filter(pos.after, pos.after), "sort": "ID_DESC"}
    offset = pos.tie - 1 if pos.last is not None and pos.tie > 0 else pos.tie
    while True:
        page = client.filter_page("flow_runs", {**body, "limit": page_size, "offset": offset})
        if pos.last is None or offset == 0 or (page.rows and str(page.rows[0]["id"]) >= pos.last):
            return offset, page
        offset = max(0, offset - page_size)


def keyset_run_pages(
    client: PrefectClient,
    lo: datetime | None,
    hi: datetime | None,
    *,
    start: Position | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[tuple[Page, Position | None]]:
    """Flow runs with expected start in [lo, hi], oldest first, with the position after each page.

    Rows at a page's last timestamp come again on the next page (the bound is
    inclusive); callers upsert, so that costs nothing but a few bytes. The
    position is None after the last page.
    """
    hi_s = iso(hi) if hi is not None else None
    pos = start or Position(iso(lo or HISTORY_START))
    while True:
        if pos.in_tie:
            # One timestamp: order by id, the one sort whose order no update changes.
            offset, page = _tie_page(client, pos, page_size)
            if len(page) == page_size:
                read = str(page.rows[-1]["id"])
                nxt: Position | None = Position(pos.after, offset + len(page), True, read)
            else:
                bumped = parse_ts(pos.after) + timedelta(microseconds=1)
                nxt = None if hi is not None and bumped > hi else Position(iso(bumped))
            yield page, nxt
        else:
            body = {**_run_filter(pos.after, hi_s), "sort": "EXPECTED_START_TIME_ASC"}
            page = client.filter_page("flow_runs", {**body, "limit": page_size, "offset": 0})
            if len(page) < page_size:
                yield page, None
                return
            last = page.rows[-1].get("expected_start_time")
            at = None if last is None else server_time(last, FILTER_START)
            if at is None or at <= parse_ts(pos.after):
                # A full page on one timestamp: page through that timestamp by id, from its
                # first row (this page came in the server's tie order, not by id).
                nxt = Position(pos.after, 0, in_tie=True)
            else:
                nxt = Position(str(last))
            yield page, nxt
        if nxt is None:
            return
        pos = nxt
