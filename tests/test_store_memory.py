"""DuckDB's memory cap for write jobs: sized from the history, never shrinking, clear when too small."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flowsync.api.client import Page
from flowsync.errors import StoreError
from flowsync.store import Store
from flowsync.store.connect import INDEX_BYTES_PER_ROW, WRITE_MEMORY_BASE
from flowsync.store.synced_tables import upsert_pages
from flowsync.store.tables import FLOW_RUNS
from tests.helpers import SeededServer, run_cli, scalar
from tests.server_truth import assert_matches_server


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
        with pytest.raises(StoreError, match=r"out of memory under its 8 MB cap.*--memory-limit"), store.transaction():
            store.execute(
                "CREATE TABLE big AS SELECT range AS i, repeat('x', 200) || range AS s FROM range(300000) ORDER BY s"
            )
        assert store.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'big'").scalar() == 0


def test_pull_with_a_too_small_cap_fails_clearly_then_a_default_pull_completes(prefect: SeededServer, db_path: Path) -> None:
    bad = run_cli("pull", "--api-url", prefect.url, "--db", str(db_path), "--memory-limit", "1", "--quiet")
    assert bad.exit_code == 5
    assert bad.stderr.count("\n") == 1 and "--memory-limit" in bad.stderr and "Traceback" not in bad.stderr
    ok = run_cli("pull", "--api-url", prefect.url, "--db", str(db_path), "--quiet")
    assert ok.exit_code == 0, ok.output
    assert scalar(db_path, "SELECT count(*) FROM flow_runs") == prefect.count()
    assert_matches_server(db_path, prefect.url)


def test_running_out_in_a_read_under_the_guard_is_one_clear_error(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.execute("SET max_temp_directory_size = '0KB'")
        store.budget_memory(0, fixed_mb=8)
        with pytest.raises(StoreError, match=r"out of memory under its 8 MB cap.*--memory-limit"), store.memory_guard():
            store.execute(
                "SELECT s, count(*) FROM (SELECT repeat('x', 200) || range AS s FROM range(300000)) GROUP BY s ORDER BY s"
            ).rows()


# 100,000 runs as a pull leaves them (every column a real page fills), built in DuckDB in seconds.
_HISTORY_SQL = """
INSERT INTO flow_runs
SELECT _run_id(i), t - INTERVAL 1 HOUR, t + INTERVAL 5 MINUTE, 'brisk-otter-' || i, _run_id(1), _run_id(2),
       'a1b2c3d4', _run_id(3), 'default-pool', _run_id(4), 'default', md5(CAST(i % 7 AS VARCHAR)),
       json_object('date', CAST(t AS DATE), 'limit', i % 500, 'dry_run', false),
       'scheduled ' || _run_id(2) || ' ' || t, '{}',
       '{"max_retries":0,"retry_delay_seconds":0.0,"retries":0,"pause_keys":[],"resuming":false}',
       ['auto-scheduled', 'prod'], json_object('prefect.flow.id', _run_id(1)), NULL,
       _run_id(i + 10000000), s, s[1] || lower(s[2:]),
       CASE WHEN s = 'FAILED' THEN 'Flow run encountered an exception: ValueError(' || i || ')' END,
       t + INTERVAL 5 MINUTE,
       json_object('flow_run_id', _run_id(i), 'transition_id', _run_id(i + 20000000), 'deferred', false),
       NULL, 1, t, NULL, t + INTERVAL 2 SECOND, t + INTERVAL 5 MINUTE, 298.0 + i % 13, 298.0, 1.5, true, NULL,
       'pid-' || i, NULL, '{}', NULL, now(), 1, NULL
FROM (SELECT range AS i, TIMESTAMPTZ '2026-01-01 00:00:00+00' + range * INTERVAL 1 MINUTE AS t,
             CASE range % 10 WHEN 0 THEN 'FAILED' WHEN 1 THEN 'CANCELLED' ELSE 'COMPLETED' END AS s
      FROM range(?))
"""


def _run_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012x}"


def _changed_run(i: int) -> dict[str, Any]:
    """Run ``i`` as the API returns it after a state change (a page's JSON object)."""
    t = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=i)
    stamp = (t + timedelta(hours=2)).isoformat()
    return {
        "id": _run_id(i), "created": (t - timedelta(hours=1)).isoformat(), "updated": stamp,
        "name": f"brisk-otter-{i}", "flow_id": _run_id(1), "deployment_id": _run_id(2),
        "parameters": {"date": t.date().isoformat(), "limit": i % 500, "dry_run": False},
        "tags": ["auto-scheduled", "prod", "retried"], "state_id": _run_id(i + 30000000),
        "state_type": "COMPLETED", "state_name": "Completed",
        "state": {"id": _run_id(i + 30000000), "type": "COMPLETED", "name": "Completed", "timestamp": stamp,
                  "message": None, "data": None, "state_details": {"flow_run_id": _run_id(i), "deferred": False}},
        "run_count": 2, "expected_start_time": t.isoformat(), "start_time": t.isoformat(), "end_time": stamp,
        "total_run_time": 7200.0, "auto_scheduled": True,
    }


def test_an_incremental_upsert_into_a_large_history_fits_the_default_cap(tmp_path: Path) -> None:
    # Reported at 100,000 runs: ~1,000 changed runs (one write batch of an incremental pull) ran out
    # of memory under the default cap (76 MB). Updating every column in place made DuckDB hold an
    # undo copy of each touched 2,048-row vector of each column: ~105 MB at its peak here.
    runs = 100_000
    path = tmp_path / "history.duckdb"
    with Store.open(path) as store:
        store.execute("CREATE TEMP MACRO _run_id(i) AS CAST(printf('00000000-0000-4000-8000-%012x', i) AS UUID)")
        store.execute(_HISTORY_SQL, [runs])
        store.execute("CHECKPOINT")
    changed = random.Random(7).sample(range(runs), 1000)
    pages = [Page.from_rows([_changed_run(i) for i in changed[lo:lo + 200]]) for lo in range(0, len(changed), 200)]
    with Store.open(path) as store:
        cap = store.budget_memory(runs)
        assert _setting_mib(store) == pytest.approx(cap / 2**20, abs=1)
        with store.transaction():
            written = upsert_pages(store, FLOW_RUNS, pages, pull_id=2)
        assert written == (0, 1000, 1000)
        assert store.execute("SELECT count(*), count(DISTINCT id) FROM flow_runs").one() == (runs, runs)
        new = store.execute(
            "SELECT count(*) FROM flow_runs WHERE seen_pull = 2 AND run_count = 2 AND list_contains(tags, 'retried')"
            " AND deleted_at IS NULL AND id IN (SELECT unnest(CAST(? AS UUID[])))",
            [[_run_id(i) for i in changed]],
        ).scalar()
        assert new == 1000
        assert store.execute("SELECT count(*) FROM flow_runs WHERE seen_pull = 1 AND run_count = 1").scalar() == runs - 1000
