"""The re-read -> call window of `flowsync apply`, and its pace, as the file grows.

A real Prefect server (SQLite, the pinned version) holds ``--runs`` COMPLETED runs
of one deployment, tagged per round. They are pulled into a file, which then gets
``--filler`` more runs written straight into DuckDB (``harness/history.py``:
a pull's layout, no server), so the decisions run over a file of that size. Then a
delete policy (``keep_newest: 5``, so every batch also reads and ranks its
deployment) is applied through the library, as the CLI does, and the apply's own
measurements are printed: the time from each re-read's answer to its call being
sent (p50/p99/max), decisions, requests, runs/s.

    .venv/bin/python -m bench.bench_apply_window --runs 1000 --filler 10000 1000000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import yaml

from flowsync.api import PrefectClient
from flowsync.config import ApiSettings
from flowsync.policy import apply_plan, make_plan, parse_policy
from flowsync.store import Store
from flowsync.sync import pull
from harness.history import _HISTORY_SQL, START
from harness.seed import new_deployment, runs_in_state
from harness.server import prefect_server


def seed_round(url: str, runs: int, tag: str) -> None:
    runs_in_state(
        url, new_deployment(url, f"window-{tag}"), runs, "COMPLETED", tag, timedelta(minutes=1)
    )


def add_filler(db: Path, filler: int, offset: int) -> None:
    """``filler`` runs of another (synthetic) deployment, as a pull would have left them."""
    with Store.writer(db, memory_limit_mb=0) as store:  # bulk filler: no write-job cap
        store.execute(
            f"CREATE TEMP MACRO _run_id(i) AS CAST(printf('00000000-0000-4000-8000-%012x', i + {offset}) AS UUID)"
        )
        store.execute(_HISTORY_SQL, [START, filler])
        store.execute("CHECKPOINT")


def one_round(url: str, folder: Path, runs: int, filler: int) -> dict[str, object]:
    tag = f"w{filler}"
    seed_round(url, runs, tag)
    db = folder / f"runs-{filler}.duckdb"
    settings = ApiSettings(url=url)
    with Store.writer(db) as store, PrefectClient(settings) as client:
        pull(client, store)
    add_filler(db, filler, offset=10_000_000)
    text = yaml.safe_dump(
        {
            "version": 1,
            "max_actions": runs,
            "rules": [
                {
                    "name": "purge",
                    "action": "delete",
                    "keep_newest": 5,
                    "sql": f"SELECT id FROM flow_runs WHERE deleted_at IS NULL AND list_contains(tags, '{tag}')",
                }
            ],
        }
    )
    loaded = parse_policy(text.encode(), "window.yaml")
    with (
        Store.sandboxed_writer(db) as store,
        PrefectClient(settings) as client,
    ):
        began = time.monotonic()
        plan = make_plan(store, loaded)
        planned = time.monotonic() - began
        result = apply_plan(client, store, plan)
        total = store.execute("SELECT count(*) FROM flow_runs").scalar()
    data = result.to_json()
    return {
        "file_runs": total,
        "plan_seconds": round(planned, 2),
        "apply_seconds": data["seconds"],
        "runs_per_second": round(result.done / max(result.seconds, 1e-9), 1),
        "done": result.done,
        "calls": result.calls,
        "rereads": result.rereads,
        "decisions": result.decisions,
        "reread_to_call_seconds": data["reread_to_call_seconds"],
        "client_seconds_per_batch": round((result.seconds - 0) / max(result.batches, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs deleted per round")
    parser.add_argument("--filler", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, prefect_server(home=Path(tmp) / "home") as server:
        for filler in args.filler:
            print(
                json.dumps(
                    {"filler": filler, **one_round(server.url, Path(tmp), args.runs, filler)}
                )
            )


if __name__ == "__main__":
    main()
