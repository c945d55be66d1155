"""The synced tables (``flows``, ``deployments``, ``flow_runs``): where a pull writes rows.

Owns: upserting a page of API objects (per batch, one ``DELETE`` of the rows
it replaces and one ``INSERT``, in the caller's transaction), marking rows
deleted, API objects the client holds read as a table's rows (``held_rows``), and the local reads and aggregates the sync compares with the server (live ids, counts, histograms, runs behind their
latest state event). The pull's own bookkeeping (cursors, ``sync_runs``) is
``sync_log``. Must not: call the API or decide what to fetch (that is
``flowsync.sync``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from flowsync.errors import QueryError
from flowsync.store.connect import Store
from flowsync.store.tables import POLLED, TableSpec, newest_by_id

T = TypeVar("T")


class Page(Protocol):
    """A page of API objects and the JSON text they came in (``flowsync.api.Page``)."""

    @property
    def rows(self) -> list[dict[str, Any]]: ...
    @property
    def raw(self) -> str: ...
    @property
    def nbytes(self) -> int: ...


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class Written(NamedTuple):
    inserted: int
    updated: int  # the `updated` stamp moved (a compared table: any column), or was marked deleted
    fresh: int  # rows this pull had not written before (boundary re-reads excluded)


def upsert_pages(store: Store, spec: TableSpec, pages: Sequence[Page], *, pull_id: int) -> Written:
    """Insert new rows, update changed ones, from API pages.

    One statement for all the pages: the rows the client already decoded go to
    DuckDB as one Arrow table (building it costs less CPU than DuckDB's
    ``from_json`` over the page text; the same values and JSON text). A row counts
    as updated when its ``updated`` stamp moved (for a ``compare_rows`` table, any
    column) or it had been marked deleted; every row gets ``seen_pull`` and ``synced_at``.
    """
    if not any(p.rows for p in pages):
        return Written(0, 0, 0)
    total = Written(0, 0, 0)
    for chunk in by_size(pages):
        _stage(store, spec, chunk, "_incoming")
        written = _merge_incoming(store, spec, pull_id)
        total = Written(*(a + b for a, b in zip(total, written, strict=True)))
    return total


# The most JSON one upsert statement stages: DuckDB needs about seven times it under the
# writer's 64 MB cap (runs with large parameters: 10 MB of them in one statement ran out of
# memory, 8 MB did not). A pull's batch of 2,000 ordinary runs is ~3-4 MB: one statement.
STAGE_BYTES = 4 * 2**20


def by_size(pages: Sequence[Page]) -> Iterator[list[Page]]:
    """``pages`` in parts of at most ``STAGE_BYTES`` of JSON each: what one upsert statement
    stages, and what a pull commits at a time (a transaction of 64 MB of such rows failed
    to commit under the cap). Pages that fit are one part, as they are; larger ones are
    merged first (one object per id, the newest ``updated``, as one statement keeps) and
    split by their rows (one row larger than that alone)."""
    if sum(p.nbytes for p in pages) <= STAGE_BYTES:
        yield list(pages)
        return
    sizes: dict[int, int] = {}  # id(row) -> its JSON's size
    for page in pages:
        each = page.nbytes // max(len(page.rows), 1)
        for row in page.rows:
            # A page's rows alike share its size; rows of a page of large ones are measured.
            sizes[id(row)] = len(orjson.dumps(row, default=str)) if each > _MEASURED else each
    objects = newest_by_id([r for p in pages for r in p.rows])
    for part in packed(objects, [sizes[id(o)] for o in objects], STAGE_BYTES):
        yield [_Held([dict(o) for o in part], sum(sizes[id(o)] for o in part))]


def packed(items: Sequence[T], sizes: Sequence[int], limit: int) -> list[list[T]]:
    """``items`` in order, in parts whose ``sizes`` add up to at most ``limit`` each (an item
    larger than that alone): what one statement stages at a time."""
    parts: list[list[T]] = []
    part: list[T] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if part and total + size > limit:
            parts.append(part)
            part, total = [], 0
        part.append(item)
        total += size
    if part:
        parts.append(part)
    return parts


# Rows are measured one by one only in pages whose rows average more than this (ordinary
# runs are 1-2 KB: their page's size, shared, is close enough).
_MEASURED = 16 * 1024


def _stage(store: Store, spec: TableSpec, pages: Sequence[Page], name: str) -> None:
    """The pages' objects as TEMP table ``name``: the table's columns and ``extra``, typed
    and deduplicated as the table holds them. A string its column's type does not read (a
    UUID, a time) is the server's: an ``ApiError`` naming it (``TableSpec.unfit``)."""
    try:
        with _cast(store, spec, [r for p in pages for r in p.rows], "_batch") as select:
            if select is not None:
                store.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}")
                return
        _stage_json(store, spec, pages, name)
    except QueryError as e:
        if e.kind != "ConversionException":
            raise
        raise spec.unfit(f"a value this flowsync cannot store ({e.detail})") from None


def _stage_json(store: Store, spec: TableSpec, pages: Sequence[Page], name: str) -> None:
    """``_stage`` for objects with a value that does not fit its column's batch type:
    DuckDB reads the page text."""
    body = "[" + ",".join(p.raw.strip()[1:-1] for p in pages if p.rows) + "]"
    store.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {spec.json_select_sql()}", [body])


@contextmanager
def _cast(
    store: Store, spec: TableSpec, rows: list[dict[str, Any]], name: str
) -> Iterator[str | None]:
    """The objects registered with DuckDB as ``name`` inside the block, and the SELECT that
    casts them to the table's columns and ``extra``, deduplicated; None (nothing registered)
    when a value does not fit its column's batch type and DuckDB must read the JSON text."""
    unknown = spec.unknown_fields(rows)
    arrow = None if unknown else spec.arrow_batch(rows)
    if arrow is not None:
        with store.registered(name, arrow):
            yield spec.select_sql(name, rewrite_json=True)
    elif unknown:
        # Fields this version has no column for: keep them in `extra` (slower path).
        with store.registered(name, spec.batch(rows)):
            yield spec.select_sql(name)
    else:
        yield None


class _Held:
    """API objects the client holds, as a ``Page`` (their text made only if DuckDB needs it)."""

    def __init__(self, rows: list[dict[str, Any]], nbytes: int = 0) -> None:
        self.rows = rows
        self.nbytes = nbytes  # its JSON text's size, where known

    @property
    def raw(self) -> str:
        return json.dumps(self.rows, default=str)


@contextmanager
def held_rows(
    store: Store, spec: TableSpec, rows: list[dict[str, Any]], name: str
) -> Iterator[str]:
    """API objects the client holds (a re-read's answer) readable as ``name`` inside the
    block: a row of ``spec``'s table as the upsert would write it, without the file's
    bookkeeping (``synced_at``, ``seen_pull``, ``deleted_at``). Yields the SELECT list
    that reads them in the table's column order, the bookkeeping as of now (read, live,
    no pull), so that a caller can use them where it would read the table's rows by id:
    reading 50 rows by id reads every column of 50 scattered vectors of a million-run
    table (BENCHMARKS.md, "Issue #24", apply per batch).

    The objects are registered with DuckDB as ``name`` and cast by the SELECT itself: no
    TEMP table is written and dropped (apply's pending rows 1.1-1.3 ms less a batch of 50,
    its decision ~0.8 ms; BENCHMARKS.md). Only objects that need DuckDB's own JSON reading
    are staged as TEMP table ``name``, dropped after."""
    cols = ", ".join(f'"{c}"' for c in [*spec.column_names, "extra"])
    bookkeeping = (
        "CAST(now() AS TIMESTAMPTZ) AS synced_at, CAST(NULL AS BIGINT) AS seen_pull, "
        "CAST(NULL AS TIMESTAMPTZ) AS deleted_at"
    )
    with _cast(store, spec, rows, name) as select:
        if select is not None:
            yield f"SELECT {cols}, {bookkeeping} FROM ({select})"
            return
    _stage_json(store, spec, [_Held(rows)], name)
    yield f"SELECT {cols}, {bookkeeping} FROM {name}"
    # (after an error the caller's transaction rolls the table back with everything else)
    store.execute(f"DROP TABLE {name}")


def _merge_incoming(store: Store, spec: TableSpec, pull_id: int) -> Written:
    cols = [*spec.column_names, "extra"]
    # (flows and deployments, a few thousand rows: every column compared but a poll's)
    differs = "".join(
        f' OR t."{c}" IS DISTINCT FROM b."{c}"'
        for c in cols
        if spec.compare_rows and c not in POLLED
    )
    if spec.name == "flow_runs":
        # (runs: the columns the server's database changes without moving `updated`, a
        # parent task run or a work queue deleted: a change, which the pull publishes)
        differs += f" OR {unstamped_sql('t')} IS DISTINCT FROM {unstamped_sql('b')}"
    incoming, inserted, updated, fresh = store.execute(
        f"""
        SELECT count(*), count(*) FILTER (WHERE t.id IS NULL),
               count(*) FILTER (WHERE t.id IS NOT NULL AND (
                    t.updated IS DISTINCT FROM b.updated OR t.deleted_at IS NOT NULL{differs})),
               count(*) FILTER (WHERE t.id IS NULL OR t.seen_pull IS DISTINCT FROM ?)
        FROM _incoming b LEFT JOIN {spec.name} t ON t.id = b.id
        """,
        [pull_id],
    ).one() or (0, 0, 0, 0)
    col_list = ", ".join(f'"{c}"' for c in cols)
    # Replace the rows, not update them in place: the upsert sets every column, and an
    # in-place UPDATE (ON CONFLICT DO UPDATE) keeps update bookkeeping for every touched
    # 2,048-row vector of each of ~40 columns and pins the table's blocks: 1,000 changed
    # runs spread over 100,000 peaked at ~105 MB, over the pull's 76 MB cap. A DELETE
    # only marks rows and the INSERT appends (peak ~30 MB; BENCHMARKS.md has the figures).
    with store.atomic():  # never a commit between the DELETE and the INSERT
        # A full pull's first pass only inserts: no scan for rows to replace.
        if inserted < incoming:
            store.execute(f"DELETE FROM {spec.name} WHERE id IN (SELECT id FROM _incoming)")
        store.execute(
            f"""
            INSERT INTO {spec.name} ({col_list}, synced_at, seen_pull, deleted_at)
            SELECT {col_list}, CAST(? AS TIMESTAMPTZ), ?, NULL FROM _incoming
            """,
            [now_utc(), pull_id],
        )
    store.execute("DROP TABLE _incoming")
    return Written(int(inserted), int(updated), int(fresh))


def mark_deleted(
    store: Store,
    table: str,
    ids: Sequence[str],
    when: datetime | None = None,
    rowids: Mapping[str, int] | None = None,
) -> int:
    """Set ``deleted_at`` on live rows with these ids; returns how many changed.

    ``rowids``: where these runs' rows were when last read (a decision's ``rows``), a hint only: a
    row is marked only if its ``id`` is one of these too, and the runs the hints missed (a
    row written again since sits elsewhere) are then found by id. Finding 50 rows by id
    scans the ``id`` column (~8-10 ms at a million runs); by row id, ~3.5 ms."""
    if not ids:
        return 0
    keys = [str(i) for i in ids]
    when = when or now_utc()
    # DuckDB answers an UPDATE with the number of rows it changed. Not RETURNING: that
    # makes the UPDATE read every column of the rows it changes (~300 ms for 50 runs
    # scattered over a million, against ~25 without; BENCHMARKS.md, "Issue #24").
    hinted = [rowids[k] for k in keys if rowids and k in rowids]
    changed = 0
    if hinted:
        changed = int(
            store.execute(
                f"""
                UPDATE {table} SET deleted_at = CAST(? AS TIMESTAMPTZ)
                WHERE deleted_at IS NULL AND rowid = ANY(CAST(? AS BIGINT[]))
                  AND id = ANY(CAST(? AS UUID[]))
                """,
                [when, hinted, keys],
            ).scalar()
            or 0
        )
        if changed == len(keys):
            return changed
    rest = store.execute(
        f"""
        UPDATE {table} SET deleted_at = CAST(? AS TIMESTAMPTZ)
        WHERE deleted_at IS NULL AND id IN (SELECT unnest(CAST(? AS UUID[])))
        """,
        [when, keys],
    ).scalar()
    return changed + int(rest or 0)


def set_states(store: Store, states: Mapping[str, tuple[str, str | None, str | None]]) -> int:
    """Live runs a call set a state on: run -> (state type, name, state id or None), as its
    answer said; the rest of each row is left for a re-read to write. Returns how many
    changed. (Written with the call's outcome rows: an apply killed before its re-read leaves
    the file showing the state it set, as ``mark_deleted`` does for a delete.)"""
    if not states:
        return 0
    ids = list(states)
    changed = store.execute(
        """
        UPDATE flow_runs SET state_type = s.state_type, state_name = s.state_name,
               state_id = CAST(s.state_id AS UUID)
        FROM (SELECT unnest(CAST(? AS UUID[])) AS id, unnest(CAST(? AS VARCHAR[])) AS state_type,
                     unnest(CAST(? AS VARCHAR[])) AS state_name,
                     unnest(CAST(? AS VARCHAR[])) AS state_id) s
        WHERE flow_runs.id = s.id AND flow_runs.deleted_at IS NULL
        """,
        [
            ids,
            [states[i][0] for i in ids],
            [states[i][1] for i in ids],
            [states[i][2] for i in ids],
        ],
    ).scalar()
    return int(changed or 0)


def mark_read(store: Store, ids: Sequence[str], when: datetime | None = None) -> None:
    """Live runs just read from the server, written or found as the file holds them: when
    each was last read (``synced_at``) is now ``when``."""
    if ids:
        store.execute(
            "UPDATE flow_runs SET synced_at = CAST(? AS TIMESTAMPTZ) "
            "WHERE deleted_at IS NULL AND id IN (SELECT unnest(CAST(? AS UUID[])))",
            [when or now_utc(), [str(i) for i in ids]],
        )


def live_ids_among(store: Store, table: str, ids: Sequence[str]) -> set[str]:
    """The ids of these that the table holds as live rows."""
    if not ids:
        return set()
    rows = store.execute(
        f"SELECT CAST(id AS VARCHAR) FROM {table} WHERE deleted_at IS NULL "
        "AND id IN (SELECT unnest(CAST(? AS UUID[])))",
        [[str(i) for i in ids]],
    ).rows()
    return {r[0] for r in rows}


def live_ids(store: Store, table: str, *, not_seen_since: int | None = None) -> list[str]:
    sql = f"SELECT CAST(id AS VARCHAR) FROM {table} WHERE deleted_at IS NULL"
    params: list[Any] = []
    if not_seen_since is not None:
        sql += " AND (seen_pull IS NULL OR seen_pull < ?)"
        params.append(not_seen_since)
    return [r[0] for r in store.execute(sql, params).rows()]


def newest_state_changes(store: Store, n: int) -> list[tuple[str, datetime]]:
    """The ``n`` runs of the file (deleted on the server too) whose state changed last, and
    when: what the server's state events of them would show."""
    rows = store.execute(
        "SELECT CAST(id AS VARCHAR), state_timestamp FROM flow_runs "
        "WHERE state_timestamp IS NOT NULL ORDER BY state_timestamp DESC LIMIT ?",
        [n],
    ).rows()
    return [(r[0], r[1]) for r in rows]


def live_run_ids_between(store: Store, lo: datetime | None, hi: datetime | None) -> set[str]:
    """Live runs whose expected start is in [lo, hi] (None = unbounded)."""
    sql = "SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE deleted_at IS NULL AND expected_start_time IS NOT NULL"
    params: list[Any] = []
    if lo is not None:
        sql += " AND expected_start_time >= ?"
        params.append(lo)
    if hi is not None:
        sql += " AND expected_start_time <= ?"
        params.append(hi)
    return {r[0] for r in store.execute(sql, params).rows()}


def deployments_updated_since(store: Store, since: datetime) -> list[str]:
    """Deployments (live or marked deleted) whose server ``updated`` stamp, or one of their
    schedules' (a row of another table on the server: editing it leaves the deployment's),
    is at or after ``since``: the ones changed since then, as far as the file knows."""
    rows = store.execute(
        """
        SELECT CAST(id AS VARCHAR) FROM deployments
        WHERE updated >= CAST($since AS TIMESTAMPTZ)
           OR list_max(list_transform(json_extract_string(schedules, '$[*].updated'),
                                      lambda s: TRY_CAST(s AS TIMESTAMPTZ)))
              >= CAST($since AS TIMESTAMPTZ)
        """,
        {"since": since},
    ).rows()
    return [r[0] for r in rows]


def deployment_stamps(store: Store) -> dict[str, str]:
    """Each deployment's change stamp as the file holds it (live or marked deleted): its
    server ``updated`` and its schedules' (a row of another table on the server: editing
    one leaves the deployment's), which pausing, resuming, deploying again or switching a
    schedule moves."""
    rows = store.execute(
        """
        SELECT CAST(id AS VARCHAR),
               coalesce(CAST(updated AS VARCHAR), '') || ' '
               || coalesce(array_to_string(list_sort(
                      json_extract_string(schedules, '$[*].updated')), ' '), '')
        FROM deployments
        """
    ).rows()
    return {str(d): str(stamp) for d, stamp in rows}


def scheduled_runs_of(store: Store, deployments: Sequence[str]) -> dict[str, list[str]]:
    """Live runs of these deployments that the file holds in a SCHEDULED state, by deployment."""
    if not deployments:
        return {}
    rows = store.execute(
        "SELECT CAST(deployment_id AS VARCHAR), CAST(id AS VARCHAR) FROM flow_runs "
        "WHERE deleted_at IS NULL AND state_type = 'SCHEDULED' "
        "AND deployment_id IN (SELECT unnest(CAST(? AS UUID[]))) ORDER BY id",
        [list(deployments)],
    ).rows()
    out: dict[str, list[str]] = {}
    for deployment, run in rows:
        out.setdefault(deployment, []).append(run)
    return out


def unfinished_run_ids(store: Store) -> list[str]:
    """Live runs not in a final state: the ones that can still change."""
    rows = store.execute(
        "SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE deleted_at IS NULL AND state_type NOT IN "
        "('COMPLETED', 'FAILED', 'CANCELLED', 'CRASHED')"
    ).rows()
    return [r[0] for r in rows]


# Run columns the server changes without moving ``updated``: foreign keys Prefect sets to
# NULL when the row they point to is deleted (a subflow's parent task run, a work queue), and
# the work pool it reads through the queue. A re-read compares them as well as the stamp.
UNSTAMPED = ("parent_task_run_id", "work_queue_id", "work_pool_id", "work_pool_name")


def unstamped_sql(alias: str = "") -> str:
    """The ``UNSTAMPED`` columns of a row of ``flow_runs`` (or of rows read as one:
    ``held_rows``), as a list of text: ``alias`` qualifies them."""
    prefix = f"{alias}." if alias else ""
    return "[" + ", ".join(f"CAST({prefix}{c} AS VARCHAR)" for c in UNSTAMPED) + "]"


# A run's ``updated`` and ``UNSTAMPED`` values, as the file holds them: what tells a re-read
# whether the server changed the run since the file's row was written.
Stamp = tuple[datetime | None, tuple[str | None, ...]]


def _unstamped(row: Mapping[str, Any]) -> tuple[str | None, ...]:
    return tuple(
        None if row.get(c) is None else str(row[c]).lower() if c.endswith("_id") else str(row[c])
        for c in UNSTAMPED
    )


def same_run(before: Mapping[str, Any], now: Mapping[str, Any] | None) -> bool:
    """The server shows a run (``now``; None: gone) as it showed it ``before``: the same
    ``updated`` stamp (Prefect moves it on every write through the API: a state, a tag, a
    name) and ``UNSTAMPED`` values."""
    return (
        now is not None
        and before.get("updated") == now.get("updated")
        and _unstamped(before) == _unstamped(now)
    )


def runs_differing(store: Store, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Of these runs (id -> the server's row), the ones the file does not hold as live rows
    with the same ``updated`` stamp and ``UNSTAMPED`` values: the rows a re-read must write."""
    if not rows:
        return []
    found = store.execute(
        f"""
        SELECT CAST(b.id AS VARCHAR) FROM (
            SELECT unnest(CAST(? AS UUID[])) AS id, unnest(CAST(? AS TIMESTAMPTZ[])) AS updated,
                   unnest(CAST(? AS VARCHAR[][])) AS unstamped) b
        LEFT JOIN flow_runs r ON r.id = b.id
        WHERE r.id IS NULL OR r.deleted_at IS NOT NULL OR r.updated IS DISTINCT FROM b.updated
           OR {unstamped_sql("r")} IS DISTINCT FROM b.unstamped
        """,
        [
            list(rows),
            [r.get("updated") for r in rows.values()],
            [list(_unstamped(r)) for r in rows.values()],
        ],
    ).rows()
    return [r[0] for r in found]


def differing_from(stamps: Mapping[str, Stamp], rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``runs_differing`` without a query, from the file's stamps read before (a decision's
    ``rows``): the same answer while nothing has written these runs since. A stamp that does
    not parse counts as differing (the run is written and decided again)."""
    out = []
    for run_id, row in rows.items():
        value = row.get("updated")
        try:
            server = None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (AttributeError, TypeError, ValueError):
            out.append(run_id)
            continue
        if stamps.get(run_id) != (server, _unstamped(row)):
            out.append(run_id)
    return out


# How far a local state's stamp may be after the pull's Date and still prove the state is the
# run's latest: a Date is to the second, and a state set in the second the pull began is
# later than it (a clock that ran ahead stamps minutes or hours after it).
AHEAD_SLACK = timedelta(minutes=2)


def runs_behind(store: Store, changed: dict[str, datetime], now: datetime) -> list[str]:
    """Of these run ids, the ones whose local state is older than ``changed[id]``.

    ``changed`` maps a run id to the time of its latest state event; a state
    event occurs at its state's timestamp, so a local row whose state timestamp
    is at least that recent already holds that state. Missing rows count as behind, and
    so do rows whose state timestamp is more than ``AHEAD_SLACK`` after ``now`` (the
    server's clock at the pull's start, to the second of its Date): stamped while that
    clock ran ahead, it proves nothing about a later change.
    """
    if not changed:
        return []
    rows = store.execute(
        "SELECT CAST(id AS VARCHAR), state_timestamp FROM flow_runs WHERE id IN (SELECT unnest(?::UUID[]))",
        [list(changed)],
    ).rows()
    local = {i: ts for i, ts in rows}
    ahead = now + AHEAD_SLACK
    return [
        i for i, at in changed.items() if local.get(i) is None or local[i] < at or local[i] > ahead
    ]


def due_for_reread(store: Store, window: timedelta, now: datetime | None = None) -> list[str]:
    """Live runs whose last read is at least 75-95% of ``window`` old (the fraction fixed per id), oldest first."""
    # The first bound (75% of the window: every due run's is later) lets DuckDB skip the
    # row groups read recently by their min/max, before the per-row hash: 1.5 ms instead
    # of 26-69 ms over a million runs read within the last 18 h.
    rows = store.execute(
        """
        SELECT CAST(id AS VARCHAR) FROM flow_runs
        WHERE deleted_at IS NULL
          AND synced_at < CAST($at AS TIMESTAMPTZ) - to_seconds(0.75 * $w)
          AND epoch(synced_at) < epoch(CAST($at AS TIMESTAMPTZ)) - $w * (0.75 + 0.2 * (hash(id) % 1000) / 1000.0)
        ORDER BY synced_at
        """,
        {"at": now or now_utc(), "w": window.total_seconds()},
    ).rows()
    return [r[0] for r in rows]


def oldest_read(store: Store, ids: Sequence[str] | None = None) -> datetime | None:
    """When the live run read longest ago (of ``ids``, or of all) was last read from the server."""
    sql = "SELECT min(synced_at) FROM flow_runs WHERE deleted_at IS NULL"
    params: list[Any] = []
    if ids is not None:
        sql += " AND id IN (SELECT unnest(CAST(? AS UUID[])))"
        params.append(list(ids))
    value: datetime | None = store.execute(sql, params).scalar()
    return value


def holds_any(store: Store, table: str) -> bool:
    """Whether ``table`` holds any row, deleted on the server or not."""
    return store.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").scalar() is True


def count_live(store: Store, table: str) -> int:
    return int(store.execute(f"SELECT count(*) FROM {table} WHERE deleted_at IS NULL").scalar())


def any_active_schedule(store: Store) -> bool:
    """Whether a live deployment in the file has an active schedule (its scheduler may
    insert runs)."""
    value = store.execute(
        """
        SELECT count(*) FROM deployments
        WHERE deleted_at IS NULL
          AND list_contains(json_extract_string(schedules, '$[*].active'), 'true')
        """
    ).scalar()
    return bool(value)


def count_live_in_state(store: Store, state_type: str) -> int:
    """Live runs whose state type is ``state_type``."""
    return int(
        store.execute(
            "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL AND state_type = ?",
            [state_type],
        ).scalar()
    )


def run_time_bounds(store: Store) -> tuple[datetime | None, datetime | None, int]:
    """Min and max expected start of live runs, and how many live runs have none."""
    row = store.execute(
        """
        SELECT min(expected_start_time), max(expected_start_time),
               count(*) FILTER (WHERE expected_start_time IS NULL)
        FROM flow_runs WHERE deleted_at IS NULL
        """
    ).one()
    assert row is not None
    return row[0], row[1], int(row[2])


def local_histogram(
    store: Store, start: datetime, interval_seconds: float, buckets: int
) -> dict[tuple[int, str], int]:
    """Live runs per (bucket of expected start, state type), bucketed as the server does."""
    rows = store.execute(
        """
        SELECT CAST(floor((epoch_us(expected_start_time) - epoch_us(CAST(? AS TIMESTAMPTZ)))
                          / (? * 1e6)) AS BIGINT) AS bucket,
               coalesce(state_type, '') AS state_type, count(*)
        FROM flow_runs
        WHERE deleted_at IS NULL AND expected_start_time >= CAST(? AS TIMESTAMPTZ)
        GROUP BY ALL
        """,
        [start, interval_seconds, start],
    ).rows()
    return {(int(b), str(s)): int(n) for b, s, n in rows if b is not None and int(b) < buckets}
