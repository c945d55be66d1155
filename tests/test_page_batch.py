"""A page of runs lands the same whichever way the store reads it.

A pull hands DuckDB the rows the client already decoded, as one Arrow table
(``TableSpec.arrow_batch``); before, DuckDB parsed the page text itself with
``from_json``, and it still does when a value does not fit its column's batch
type. Both must write the same rows, byte for byte in the JSON columns. No
server: pages are built here, the file is real.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from flowsync.api import Page
from flowsync.store import Store, synced_tables
from flowsync.store.tables import FLOW_RUNS, TableSpec

RUN: dict[str, Any] = {
    "id": "00000000-0000-4000-8000-000000000001",
    "created": "2026-11-01T10:00:00.123456Z",
    "updated": "2026-11-01T10:05:00.654321Z",
    "name": "amber-otter",
    "flow_id": "00000000-0000-4000-8000-0000000000f1",
    "deployment_id": "00000000-0000-4000-8000-0000000000d1",
    "deployment_version": "v1",
    "work_pool_id": None,
    "work_pool_name": "pool",
    "work_queue_id": None,
    "work_queue_name": "default",
    "flow_version": "abc",
    "parameters": {"x": 1, "name": "n"},
    "idempotency_key": "k1",
    "context": {},
    "empirical_policy": {"retries": 0, "retry_delay": None, "pause_keys": []},
    "tags": ["a", "b"],
    "labels": {"prefect.flow.id": "f1"},
    "parent_task_run_id": None,
    "state_id": "00000000-0000-4000-8000-0000000000a1",
    "state_type": "COMPLETED",
    "state_name": "Completed",
    "state": {
        "id": "00000000-0000-4000-8000-0000000000a1",
        "type": "COMPLETED",
        "name": "Completed",
        "timestamp": "2026-11-01T10:05:00.000001Z",
        "message": "done",
        "data": None,
        "state_details": {"flow_run_id": "00000000-0000-4000-8000-000000000001"},
    },
    "run_count": 1,
    "expected_start_time": "2026-11-01T10:00:00Z",
    "next_scheduled_start_time": None,
    "start_time": "2026-11-01T10:00:01+00:00",
    "end_time": "2026-11-01T10:05:00Z",
    "total_run_time": 299,
    "estimated_run_time": 299.5,
    "estimated_start_time_delta": 1.0,
    "auto_scheduled": False,
    "infrastructure_document_id": None,
    "infrastructure_pid": None,
    "created_by": None,
    "job_variables": {},
}


def run(n: int, **fields: Any) -> dict[str, Any]:
    obj = copy.deepcopy(RUN)
    obj["id"] = f"00000000-0000-4000-8000-{n:012d}"
    obj.update(fields)
    return obj


def tricky_page() -> list[dict[str, Any]]:
    """Values where two JSON writers could disagree, and shapes a row may take."""
    missing_fields = run(4)
    for field in ("work_queue_name", "labels", "run_count"):
        del missing_fields[field]
    return [
        run(
            1,
            parameters={
                "text": "héllo ✓ 😀",
                "escapes": 'a\nb\t"q" \\ / \u0001 \u007f \u2028',
                "floats": [1e-7, 1.5e300, 0.1, -0.0, 3.0, 1e16, 123456789.123],
                "ints": [2**53 + 1, -(2**63), 2**63 - 1],
                "empty": [{}, []],
            },
        ),
        run(2, state=None, tags=[], labels={}, parameters={"z": 1, "a": {"y": 2, "b": None}}),
        run(3, state={"type": "FAILED", "message": None}),
        missing_fields,
        # the same run twice on a batch (keyset pages re-read their boundary rows): newest wins
        run(5, updated="2026-11-02T00:00:00Z", name="older"),
        run(5, updated="2026-11-03T00:00:00Z", name="newer"),
    ]


def written(tmp_path: Path, rows: list[dict[str, Any]], name: str) -> list[tuple[Any, ...]]:
    """Upsert ``rows`` as one page into a new file; its flow_runs rows as text, by id."""
    body = json.dumps(rows).encode()
    with Store.writer(tmp_path / f"{name}.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(store, FLOW_RUNS, [Page(rows, body)], pull_id=1)
        return store.execute(
            "SELECT CAST(t AS VARCHAR) FROM (SELECT * EXCLUDE (synced_at) FROM flow_runs) t "
            "ORDER BY id"
        ).rows()


def test_arrow_batch_writes_what_duckdbs_json_reader_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = tricky_page()
    assert FLOW_RUNS.arrow_batch(rows) is not None  # these go through Arrow
    fast = written(tmp_path, rows, "arrow")
    monkeypatch.setattr(TableSpec, "arrow_batch", lambda self, objects: None)
    reference = written(tmp_path, rows, "from_json")
    assert len(fast) == 5
    assert fast == reference
    assert "newer" in fast[-1][0]


def test_a_value_arrow_cannot_hold_falls_back_to_duckdbs_reader(tmp_path: Path) -> None:
    # A number where the column is text: DuckDB's JSON reader stores its text.
    rows = [run(1, flow_version=3, tags=["a", 7])]
    assert FLOW_RUNS.arrow_batch(rows) is None
    with Store.writer(tmp_path / "x.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(
                store, FLOW_RUNS, [Page(rows, json.dumps(rows).encode())], pull_id=1
            )
        assert store.execute("SELECT flow_version, tags FROM flow_runs").one() == ("3", ["a", "7"])


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(tricky_page(), id="arrow"),
        pytest.param([run(1, a_field_we_do_not_know={"k": 1}), run(2)], id="unknown-fields"),
        pytest.param([run(1, flow_version=3, tags=["a", 7]), run(2)], id="json-text"),
    ],
)
def test_held_rows_read_as_the_upsert_writes_them(
    tmp_path: Path, rows: list[dict[str, Any]]
) -> None:
    """A re-read's answer read in place of the file's rows (``held_rows``: the audit's run
    row, a decision's guards) is the row the upsert writes, on each of the upsert's paths;
    nothing is left behind in the file."""
    with Store.writer(tmp_path / "x.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(
                store, FLOW_RUNS, [Page(rows, json.dumps(rows).encode())], pull_id=1
            )
        bookkeeping = "EXCLUDE (synced_at, seen_pull, deleted_at)"
        in_file = store.execute(
            f"SELECT CAST(t AS VARCHAR) FROM (SELECT * {bookkeeping} FROM flow_runs) t ORDER BY id"
        ).rows()
        tables = "SELECT count(*) FROM duckdb_tables() WHERE table_name = '_held'"
        with store.transaction():
            with synced_tables.held_rows(store, FLOW_RUNS, rows, "_held") as select:
                held = store.execute(
                    f"SELECT CAST(t AS VARCHAR) FROM (SELECT * {bookkeeping} FROM ({select})) t "
                    "ORDER BY id"
                ).rows()
                live = store.execute(
                    f"SELECT DISTINCT seen_pull IS NULL AND deleted_at IS NULL FROM ({select})"
                ).rows()
            assert store.execute(tables).scalar() == 0
        assert held == in_file
        assert live == [(True,)]
        assert len(held) == len({r["id"] for r in rows})


def test_single_threaded_restores_the_setting(tmp_path: Path) -> None:
    with Store.writer(tmp_path / "x.duckdb") as store:
        store.execute("SET threads = 3")
        with store.single_threaded():
            assert store.execute("SELECT current_setting('threads')").scalar() == 1
        assert store.execute("SELECT current_setting('threads')").scalar() == 3


def test_a_re_read_compared_with_stamps_read_before_gives_the_querys_answer(
    tmp_path: Path,
) -> None:
    """``differing_from`` (the stamps a decision made ahead read) and ``runs_differing`` (a
    query) tell the same runs apart: same instant in another notation, a microsecond later,
    a deleted run, a run not in the file, no stamp, a stamp that does not parse, and, with
    the stamp unmoved, a column the server's database changes without it (a subflow's parent
    set to NULL when the parent is deleted, a work queue deleted, a pool renamed)."""
    stamp = "2026-11-02T10:00:00.123456+00:00"
    parent, queue = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000b1"
    rows = [
        run(n, updated=stamp, parent_task_run_id=parent, work_queue_id=queue) for n in range(1, 11)
    ]
    rows[6]["updated"] = None
    with Store.writer(tmp_path / "runs.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(store, FLOW_RUNS, [Page.from_rows(rows)], pull_id=1)
            synced_tables.mark_deleted(store, "flow_runs", [rows[3]["id"]])
        server = {r["id"]: dict(r) for r in rows}
        server[rows[0]["id"]]["updated"] = "2026-11-02T10:00:00.123456Z"  # the same instant
        server[rows[1]["id"]]["updated"] = "2026-11-02T12:00:00.123456+02:00"  # the same instant
        server[rows[2]["id"]]["updated"] = "2026-11-02T10:00:00.123457Z"  # a microsecond later
        server[rows[4]["id"]]["updated"] = None  # the server sent no stamp
        server[rows[7]["id"]]["parent_task_run_id"] = None  # its parent deleted
        server[rows[8]["id"]]["work_queue_id"] = None  # its work queue deleted
        server[rows[9]["id"]]["work_pool_name"] = "renamed"
        server[rows[5]["id"]]["work_queue_id"] = queue.upper()  # the same id, other notation
        server[run(11)["id"]] = run(11, updated=stamp)  # not in the file
        by_query = synced_tables.runs_differing(store, server)
        stamps = {i: u for i, (u, _) in _live_rows(store, list(server)).items()}
        assert sorted(synced_tables.differing_from(stamps, server)) == sorted(by_query)
        changed = [rows[i]["id"] for i in (2, 3, 4, 7, 8, 9)] + [run(11)["id"]]
        assert sorted(by_query) == sorted(changed)
        # a stamp that does not parse is counted as changed (written and decided again)
        unparsed = {rows[0]["id"]: {**rows[0], "updated": "yesterday"}}
        assert synced_tables.differing_from(stamps, unparsed) == [rows[0]["id"]]


def test_runs_marked_deleted_by_row_id_hints_are_exactly_the_runs_named(tmp_path: Path) -> None:
    """``mark_deleted`` with row ids read before: right hints mark by row id; a hint left
    stale by a row written again since (it now points at another run, or at nothing) never
    marks a run not named, and the runs it missed are found by id; the count is exact."""
    rows = [run(n) for n in range(1, 9)]
    ids = [r["id"] for r in rows]
    with Store.writer(tmp_path / "runs.duckdb") as store:
        with store.transaction():
            synced_tables.upsert_pages(store, FLOW_RUNS, [Page.from_rows(rows)], pull_id=1)
        hints = {i: rowid for i, (_, rowid) in _live_rows(store, ids).items()}
        assert len(set(hints.values())) == 8

        def live() -> set[str]:
            return set(_live_rows(store, ids))

        with store.transaction():
            assert synced_tables.mark_deleted(store, "flow_runs", ids[:2], rowids=hints) == 2
        assert live() == set(ids[2:])
        # run 3 written again (a re-read): its row moves; a stale hint points run 4 at run 5's row
        with store.transaction():
            synced_tables.upsert_pages(store, FLOW_RUNS, [Page.from_rows([rows[2]])], pull_id=2)
        stale = {ids[2]: hints[ids[2]], ids[3]: hints[ids[4]]}
        with store.transaction():
            assert synced_tables.mark_deleted(store, "flow_runs", ids[2:4], rowids=stale) == 2
        assert live() == set(ids[4:])  # run 5 not marked: its row was hinted, it was not named
        with store.transaction():  # no hints, some already marked: the live ones counted
            assert synced_tables.mark_deleted(store, "flow_runs", ids[3:6]) == 2
        assert live() == set(ids[6:])


def _live_rows(store: Store, ids: list[str]) -> dict[str, tuple[Any, int]]:
    """What a decision reads of these runs' live rows: id -> (its stamp, row id)."""
    rows = store.execute(
        f"SELECT CAST(id AS VARCHAR), updated, {synced_tables.unstamped_sql()}, rowid "
        "FROM flow_runs WHERE deleted_at IS NULL AND id IN (SELECT unnest(CAST(? AS UUID[])))",
        [ids],
    ).rows()
    return {r[0]: ((r[1], tuple(r[2])), int(r[3])) for r in rows}


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tags": "a,b"}, 'tags = "a,b"'),  # pyarrow: ['a', ',', 'b']
        ({"tags": {"team": "data"}}, "tags = {"),  # from_json: NULL
        ({"tags": [1, {"a": 1}]}, "tags = [1,"),  # str(): a Python repr
        ({"run_count": 3.7}, "run_count = 3.7"),  # pyarrow and int(): 3
        ({"auto_scheduled": "false"}, 'auto_scheduled = "false"'),  # bool(): True
        ({"total_run_time": True}, "total_run_time = true"),  # pyarrow: 1.0
        ({"expected_start_time": 12345}, "expected_start_time = 12345"),
        ({"deployment_id": "dep-abc"}, "Could not convert string 'dep-abc' to UUID"),  # NULL
        ({"state": {"type": "COMPLETED", "timestamp": "soon"}}, "soon"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
@pytest.mark.parametrize("unknown", [False, True], ids=["arrow", "unknown-fields"])
def test_a_value_of_another_type_than_its_column_takes_is_refused_not_stored_otherwise(
    tmp_path: Path, fields: dict[str, Any], said: str, unknown: bool
) -> None:
    """A server value whose JSON type its column does not take (a newer Prefect's format, a
    proxy rewriting answers) was stored as something else on one path or another: a
    string as a list of its characters, an object as NULL, 3.7 as 3, "false" as true, a
    list holding an object as a Python repr, a string that is no UUID as NULL. The page is
    refused with one ``ApiError`` naming the table, the run and the field; nothing of it
    is written."""
    from flowsync.errors import ApiError

    rows = [run(1), run(2, **fields)]
    if unknown:  # a field this version has no column for: the page takes the other path
        rows[1]["a_field_we_do_not_know"] = 1
    with Store.writer(tmp_path / "x.duckdb") as store:
        with pytest.raises(ApiError) as refused, store.transaction():
            synced_tables.upsert_pages(
                store, FLOW_RUNS, [Page(rows, json.dumps(rows).encode())], pull_id=1
            )
        message = str(refused.value)
        assert message.startswith("The server sent flow_runs ") and said in message, message
        assert "upgrade flowsync" in message and "\n" not in message
        assert store.execute("SELECT count(*) FROM flow_runs").scalar() == 0
