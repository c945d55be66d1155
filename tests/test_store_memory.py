"""DuckDB's memory cap for write jobs: sized from the history, never shrinking, clear when too small."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from flowsync.api.client import Page
from flowsync.errors import StoreError
from flowsync.store import Store
from flowsync.store.connect import INDEX_BYTES_PER_ROW, WRITE_MEMORY_BASE
from flowsync.store.synced_tables import upsert_pages
from flowsync.store.tables import FLOW_RUNS
from tests.helpers import SeededServer, run_cli, scalar
from tests.server_truth import assert_matches_server
from tests.support.history import changed_run, make_history, run_id


def _setting_mib(store: Store) -> float:
    text = str(store.execute("SELECT current_setting('memory_limit')").scalar())
    number, unit = text.split()
    return float(number) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def test_budget_is_sized_from_rows_and_only_grows(db_path: Path) -> None:
    with Store.open(db_path) as store:
        small = store.budget_memory(10_000)
        assert small == WRITE_MEMORY_BASE + 10_000 * INDEX_BYTES_PER_ROW
        assert _setting_mib(store) == pytest.approx(small / 2**20, abs=1)
        assert store.budget_memory(100) == small  # never lowered mid-command
        big = store.budget_memory(1_000_000)
        assert big > small and _setting_mib(store) == pytest.approx(big / 2**20, abs=1)
        assert store.budget_memory(0, fixed_mb=512) == 512 * 2**20
        assert _setting_mib(store) == pytest.approx(512, abs=1)


def test_zero_leaves_duckdbs_default(db_path: Path) -> None:
    with Store.open(db_path) as store:
        default = _setting_mib(store)
        assert store.budget_memory(10, fixed_mb=0) == 0
        assert _setting_mib(store) == default


def test_running_out_under_the_cap_is_one_clear_error_and_saves_nothing(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.execute("SET max_temp_directory_size = '0KB'")  # no spilling: the cap is hard
        store.budget_memory(0, fixed_mb=8)
        with (
            pytest.raises(StoreError, match=r"out of memory under its 8 MB cap.*--memory-limit"),
            store.transaction(),
        ):
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
    with Store.open(db_path) as store:
        store.execute("SET max_temp_directory_size = '0KB'")
        store.budget_memory(0, fixed_mb=8)
        with (
            pytest.raises(StoreError, match=r"out of memory under its 8 MB cap.*--memory-limit"),
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
    with Store.open(path) as store:
        cap = store.budget_memory(runs)
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
