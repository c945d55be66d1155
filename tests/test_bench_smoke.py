"""The fast benchmark seeder yields a server that serves every replicated run.

Tiny N (a 40-run template through the API, replicated to 300 in SQLite), so it
stays well under a minute; the full benchmark is ``python -m bench.bench_pull``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.fast_seed import fast_seed, verify

FLOOR = Path(__file__).resolve().parent.parent / "bench" / "contenders" / "floor.py"


@pytest.mark.timeout(240)
def test_fast_seed_count_matches_and_reuses(start_server: Any, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    seeded = fast_seed(300, home, template_runs=40, check=False, log=lambda _msg: None)
    assert not seeded.reused
    again = fast_seed(300, home, template_runs=40, check=False, log=lambda _msg: None)
    assert again.reused
    with start_server(home=home) as server:
        assert verify(server.url, 300)["read"] == 300
        with httpx.Client(base_url=server.url + "/", timeout=60) as c:
            by_state = c.post(
                "flow_runs/count", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
            )
            by_state.raise_for_status()
            # STATE_MIX puts 62% in COMPLETED; a wide band keeps the test robust to the RNG.
            assert 120 <= by_state.json() <= 240
            runs = c.post(
                "flow_runs/filter", json={"limit": 5, "sort": "EXPECTED_START_TIME_ASC"}
            ).json()
            states = c.get(f"flow_runs/{runs[0]['id']}").json()["state"]
            assert states["type"] == runs[0]["state_type"]
        # The keyset floor of the million-run benchmark reads every run, in parts, in parallel.
        for args in (["--in-flight", "1"], ["--in-flight", "3", "--segments", "7"]):
            floor = subprocess.run(
                [
                    sys.executable,
                    str(FLOOR),
                    "--url",
                    server.url,
                    "--keyset",
                    "--page-size",
                    "25",
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            summary = json.loads(floor.stdout.strip().splitlines()[-1])
            assert summary["rows"] == 300, summary
            assert summary["rows_read"] >= 300 and summary["requests"] >= 300 // 25


def test_the_apply_batch_benchmark_runs_on_this_code() -> None:
    """``bench_apply_batch`` drives the ledger and the store as apply does, so a change to
    their signatures breaks it: it runs here at a tiny size (no server)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_apply_batch", *("--runs", "2000", "--batches", "2")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["runs"] == 2000 and row["batch_ms"] > 0 and row["pending_ms"] > 0
