"""The demo: a local Prefect server, realistic runs (seeded and real @flow runs), a pull, the status.

    scripts/demo            # or: .venv/bin/python -m bench.demo [--runs N] [--keep]

The server's home and the DuckDB file go to .demo/ in the repository.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tests.support.seed import run_real_flows, seed
from tests.support.server import prefect_server

ROOT = Path(__file__).resolve().parent.parent


def flowsync(*args: str) -> None:
    cmd = [sys.executable, "-m", "flowsync", *args]
    print(f"\n$ flowsync {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000, help="seeded flow runs (the server makes ~25/s)")
    p.add_argument("--keep", action="store_true", help="keep the server running until Ctrl-C")
    a = p.parse_args()
    demo = ROOT / ".demo"
    demo.mkdir(exist_ok=True)
    db = demo / "flowsync.duckdb"
    for stale in (db, Path(str(db) + ".wal")):
        stale.unlink(missing_ok=True)
    print("starting a local Prefect server (about 15 s)...", flush=True)
    with prefect_server(home=demo / f"prefect-{int(time.time())}") as server:
        print(f"Prefect API at {server.url}; seeding {a.runs} runs over 60 days...", flush=True)
        t = time.monotonic()
        seeded = seed(server.url, runs=a.runs, flows=5, deployments_per_flow=3, days=60)
        print(f"seeded {len(seeded.runs)} runs in {time.monotonic() - t:.0f}s; running real @flow runs...", flush=True)
        run_real_flows(server.url, server.home)
        flowsync("pull", "--api-url", server.url, "--db", str(db))
        flowsync("pull", "--api-url", server.url, "--db", str(db))
        flowsync("status", "--db", str(db))
        extra = [
            ("report", "failures", "--by", "deployment", "--db", str(db)),
            ("plan", str(ROOT / "docs" / "examples" / "repair-stuck.yaml"), "--db", str(db)),
        ]
        for args in extra:
            try:
                flowsync(*args)
            except subprocess.CalledProcessError as e:
                print(f"(step failed with exit {e.returncode})", flush=True)
        print(f"\nThe file is {db}. Try: .venv/bin/flowsync sql \"SELECT state_type, count(*) FROM flow_runs GROUP BY 1\" --db {db}")
        if a.keep:
            print(f"Server running at {server.url}; Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
