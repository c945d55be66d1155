"""DuckDB's memory cap for write jobs: sized from the history, never shrinking, clear when too small."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flowsync.api.client import Page
from flowsync.errors import StoreError
from flowsync.store import Store, Writer
from flowsync.store.connect import WRITE_MEMORY
from flowsync.store.migrations import MIGRATIONS
from flowsync.store.synced_tables import upsert_pages
from flowsync.store.tables import FLOW_RUNS
from harness.history import changed_run, make_history, run_id
from tests.helpers import SeededServer, run_cli, scalar
from tests.server_truth import assert_matches_server


def _setting_mib(store: Store) -> float:
    text = str(store.execute("SELECT current_setting('memory_limit')").scalar())
    number, unit = text.split()
    return float(number) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def test_budget_is_flat_and_replaced_by_a_fixed_cap(db_path: Path) -> None:
    with Store.writer(db_path) as store:  # a writer opens capped for a write job
        assert store.memory_budget == WRITE_MEMORY
        assert _setting_mib(store) == pytest.approx(WRITE_MEMORY / 2**20, abs=1)
        cap = store.budget_memory()
        assert cap == WRITE_MEMORY
        assert _setting_mib(store) == pytest.approx(cap / 2**20, abs=1)
        assert store.budget_memory(fixed_mb=512) == 512 * 2**20
        assert _setting_mib(store) == pytest.approx(512, abs=1)


def test_flow_runs_has_no_index_and_an_old_file_is_upgraded(tmp_path: Path) -> None:
    # Before m003 flow_runs had a primary key, whose index DuckDB holds in memory whole
    # (47 MB at a million runs): a pull's memory grew with the history.
    old = tmp_path / "old.duckdb"
    con = duckdb.connect(str(old))
    con.execute(
        "CREATE TABLE _flowsync_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
    )
    for name, fn in MIGRATIONS[:2]:
        fn(con)
        con.execute("INSERT INTO _flowsync_migrations VALUES (?, now())", [name])
    con.execute(
        "INSERT INTO flow_runs (id, name, tags, synced_at, seen_pull) "
        "SELECT uuid(), 'run-' || range, ['a'], now(), 1 FROM range(500)"
    )
    con.close()
    with Store.writer(old) as store:
        assert "m003_flow_runs_without_primary_key" in store.applied_migrations()
        constraints = store.execute(
            "SELECT constraint_type, constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = 'flow_runs' ORDER BY ALL"
        ).rows()
        assert constraints == [("NOT NULL", ["id"]), ("NOT NULL", ["synced_at"])]
        assert (
            store.execute(
                "SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'flow_runs'"
            ).scalar()
            == 0
        )
        assert store.execute(
            "SELECT count(*), count(DISTINCT id), min(tags[1]) FROM flow_runs"
        ).one() == (500, 500, "a")
        columns = [r[0] for r in store.execute("DESCRIBE flow_runs").rows()]
        assert columns[:3] == ["id", "created", "updated"] and columns[-1] == "deleted_at"


def test_a_run_written_again_replaces_its_row(db_path: Path) -> None:
    # Without a key, the write path alone keeps ids unique: within a batch, across batches.
    first = Page.from_rows([changed_run(i) for i in range(300)])
    again = Page.from_rows([changed_run(i) for i in range(200, 400)])
    with Store.writer(db_path) as store:
        with store.transaction():
            upsert_pages(store, FLOW_RUNS, [first, again], pull_id=1)
        with store.transaction():
            written = upsert_pages(store, FLOW_RUNS, [again, again], pull_id=2)
        assert written == (0, 0, 200)
        assert store.execute("SELECT count(*), count(DISTINCT id) FROM flow_runs").one() == (
            400,
            400,
        )
        assert store.execute("SELECT count(*) FROM flow_runs WHERE seen_pull = 2").scalar() == 200


OUT_OF_MEMORY = r"out of memory under its 8 MB cap.*--memory-limit"


@contextmanager
def capped_at_8mb(db_path: Path) -> Iterator[Writer]:
    """A writer capped at 8 MB that may not spill to disk: the cap is hard."""
    with Store.writer(db_path) as store:
        store.execute("SET max_temp_directory_size = '0KB'")
        store.budget_memory(fixed_mb=8)
        yield store


def test_zero_leaves_duckdbs_default(db_path: Path) -> None:
    with Store.writer(db_path, memory_limit_mb=0) as store:
        default = _setting_mib(store)
        assert store.memory_budget is None and default > WRITE_MEMORY / 2**20
        assert store.budget_memory(fixed_mb=0) == 0
        assert _setting_mib(store) == default
    with Store.writer(db_path, memory_limit_mb=512) as store:
        assert _setting_mib(store) == pytest.approx(512, abs=1)


def test_running_out_under_the_cap_is_one_clear_error_and_saves_nothing(db_path: Path) -> None:
    with capped_at_8mb(db_path) as store:
        with pytest.raises(StoreError, match=OUT_OF_MEMORY), store.transaction():
            store.execute(
                "CREATE TABLE big AS SELECT range AS i, repeat('x', 200) || range AS s FROM range(300000) ORDER BY s"
            )
        assert (
            store.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'big'"
            ).scalar()
            == 0
        )


def test_pull_with_a_too_small_cap_fails_clearly_then_a_default_pull_completes(
    prefect: SeededServer, db_path: Path
) -> None:
    bad = run_cli(
        "pull", "--api-url", prefect.url, "--db", str(db_path), "--memory-limit", "1", "--quiet"
    )
    assert bad.exit_code == 5
    assert (
        bad.stderr.count("\n") == 1
        and "--memory-limit" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    ok = run_cli("pull", "--api-url", prefect.url, "--db", str(db_path), "--quiet")
    assert ok.exit_code == 0, ok.output
    assert scalar(db_path, "SELECT count(*) FROM flow_runs") == prefect.count()
    assert_matches_server(db_path, prefect.url)


def test_running_out_in_a_read_under_the_guard_is_one_clear_error(db_path: Path) -> None:
    with (
        capped_at_8mb(db_path) as store,
        pytest.raises(StoreError, match=OUT_OF_MEMORY),
        store.memory_guard(),
    ):
        store.execute(
            "SELECT s, count(*) FROM (SELECT repeat('x', 200) || range AS s FROM range(300000)) GROUP BY s ORDER BY s"
        ).rows()


def test_an_incremental_upsert_into_a_large_history_fits_the_default_cap(tmp_path: Path) -> None:
    # Reported at 100,000 runs: ~1,000 changed runs (one write batch of an incremental pull) ran out
    # of memory under the default cap (76 MB). Updating every column in place (ON CONFLICT DO
    # UPDATE) needed ~100 MB here; replacing the rows needs ~30 MB.
    runs = 100_000
    path = make_history(tmp_path / "history.duckdb", runs)
    changed = random.Random(7).sample(range(runs), 1000)
    pages = [
        Page.from_rows([changed_run(i) for i in changed[lo : lo + 200]])
        for lo in range(0, len(changed), 200)
    ]
    with Store.writer(path) as store:
        cap = store.budget_memory()
        assert _setting_mib(store) == pytest.approx(cap / 2**20, abs=1)
        with store.transaction():
            written = upsert_pages(store, FLOW_RUNS, pages, pull_id=2)
        assert written == (0, 1000, 1000)
        assert store.execute("SELECT count(*), count(DISTINCT id) FROM flow_runs").one() == (
            runs,
            runs,
        )
        new = store.execute(
            "SELECT count(*) FROM flow_runs WHERE seen_pull = 2 AND run_count = 2 AND list_contains(tags, 'retried')"
            " AND deleted_at IS NULL AND id IN (SELECT unnest(CAST(? AS UUID[])))",
            [[run_id(i) for i in changed]],
        ).scalar()
        assert new == 1000
        assert (
            store.execute(
                "SELECT count(*) FROM flow_runs WHERE seen_pull = 1 AND run_count = 1"
            ).scalar()
            == runs - 1000
        )


def large_parameter_runs(n: int, kb: int) -> list[dict[str, Any]]:
    """``n`` runs whose parameters are ``kb`` KB of JSON each (lists of file paths, say)."""
    return [
        {**changed_run(i), "parameters": {"files": [f"s3://bucket/{i}/" + "x" * 90] * (kb * 10)}}
        for i in range(n)
    ]


def pull_context(store: Writer) -> Any:
    """What a pull writes its pages through (``PullContext.write_pages``), with no server."""
    from datetime import datetime, timezone

    from flowsync.sync import NullProgress, PullOptions
    from flowsync.sync.context import PullContext

    no_server: Any = None  # writing pages asks nothing of the server
    return PullContext(
        no_server, store, PullOptions(), NullProgress(), 1, datetime.now(timezone.utc)
    )


def test_runs_with_large_parameters_are_written_under_the_default_cap(db_path: Path) -> None:
    """A page of 200 runs with 200 KB of parameters each (40 MB of JSON): DuckDB needs about
    seven times what one statement stages, and a transaction of 64 MB of such rows failed to
    commit under the 64 MB cap. The pull stages and commits them a few MB at a time, the
    cursor with the last part."""
    from flowsync.store import sync_log

    rows = large_parameter_runs(200, 200)
    page = Page.from_rows(rows)
    assert len(page.body) > 40 * 2**20
    with Store.writer(db_path) as store:
        ctx = pull_context(store)
        assert ctx.write_pages(FLOW_RUNS, [page], {"flow_runs.cursor": "covered"}) == 200
        assert sync_log.get_state(store, "flow_runs.cursor") == "covered"
        assert store.execute(
            "SELECT count(*), count(DISTINCT id), sum(length(CAST(parameters AS VARCHAR))) "
            "FROM flow_runs"
        ).one() == (
            200,
            200,
            sum(len(json.dumps(r["parameters"], separators=(",", ":"))) for r in rows),
        )


def test_running_out_of_memory_while_staging_rows_is_the_one_clear_error(db_path: Path) -> None:
    """Out of memory inside the upsert: the error says so and names --memory-limit (the
    staged rows' clean-up on the aborted transaction used to replace it with DuckDB's
    "Current transaction is aborted")."""
    with (
        capped_at_8mb(db_path) as store,
        pytest.raises(StoreError, match=OUT_OF_MEMORY),
        store.transaction(),
    ):
        upsert_pages(store, FLOW_RUNS, [Page.from_rows(large_parameter_runs(20, 200))], pull_id=1)


def test_a_run_twice_in_pages_written_in_parts_keeps_its_newest_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages written in parts (shrunk here) are merged first, as one statement merges them:
    the newest ``updated`` of a run read twice is kept, and counted once."""
    from flowsync.store import synced_tables

    newer = {**changed_run(1), "updated": "2030-01-01T00:00:00+00:00", "name": "NEWER"}
    older = {**changed_run(1), "updated": "2020-01-01T00:00:00+00:00", "name": "OLDER"}
    filler = [changed_run(i) for i in range(10, 20)]
    pages = [Page.from_rows([newer, *filler]), Page.from_rows([*filler, older])]
    seen = {}
    for stage in (4 * 2**20, 2000):  # one statement; parts of ~2 rows
        monkeypatch.setattr(synced_tables, "STAGE_BYTES", stage)
        assert len(list(synced_tables.by_size(pages))) == (1 if stage > 2000 else 6)
        with Store.writer(tmp_path / f"{stage}.duckdb") as store:
            with store.transaction():
                written = upsert_pages(store, FLOW_RUNS, pages, pull_id=1)
            name = store.execute("SELECT name FROM flow_runs WHERE id = ?", [newer["id"]]).scalar()
        seen[stage] = (written, name)
    assert seen[2000] == seen[4 * 2**20] == ((11, 0, 11), "NEWER")


def test_more_large_rows_than_the_cap_can_commit_is_the_one_clear_error(db_path: Path) -> None:
    """~66 MB of parameters in one flush: past what the 64 MB cap can commit even in parts
    (DuckDB "failed to pin block" at a commit): the error names --memory-limit, as any
    out-of-memory does, not DuckDB's transaction error."""
    page = Page.from_rows(large_parameter_runs(330, 200))
    with Store.writer(db_path) as store, pytest.raises(StoreError) as raised:
        ctx = pull_context(store)
        ctx.write_pages(FLOW_RUNS, [page])
    assert "ran out of memory under its 64 MB cap" in str(raised.value)
    assert "--memory-limit" in str(raised.value)
