"""The demo: a local Prefect server with two weeks of realistic history, a pull, the reports.

    scripts/demo            # or: .venv/bin/python -m demo [--days N] [--keep]

The history (``harness.demo_data``) follows each deployment's schedule, with
durations that differ by flow, lateness of seconds (a few minutes-late
outliers), several distinct failure messages, and one deployment failing
since yesterday. The server's home, the DuckDB file, the health page and the
OpenMetrics file go to .demo/ in the repository.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.demo_data import seed_demo
from harness.server import prefect_server

ROOT = Path(__file__).resolve().parent.parent


def flowsync(*args: str) -> None:
    cmd = [sys.executable, "-m", "flowsync", *args]
    print(f"\n$ flowsync {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--days", type=int, default=14, help="days of history to write (about 210 runs a day)"
    )
    p.add_argument("--keep", action="store_true", help="keep the server running until Ctrl-C")
    a = p.parse_args()
    demo = ROOT / ".demo"
    demo.mkdir(exist_ok=True)
    db = demo / "flowsync.duckdb"
    for stale in (db, Path(str(db) + ".wal")):
        stale.unlink(missing_ok=True)
    for old in demo.glob("prefect-*"):
        shutil.rmtree(old, ignore_errors=True)
    home = demo / f"prefect-{int(time.time())}"
    print(
        f"writing {a.days} days of run history for a local Prefect server (about a minute)...",
        flush=True,
    )
    t = time.monotonic()
    runs = seed_demo(home, days=a.days)
    print(f"wrote {runs} runs in {time.monotonic() - t:.0f}s; starting the server...", flush=True)
    with prefect_server(home=home) as server:
        print(f"Prefect API at {server.url}", flush=True)
        flowsync("pull", "--api-url", server.url, "--db", str(db))
        flowsync("pull", "--api-url", server.url, "--db", str(db))
        flowsync("status", "--db", str(db))
        page, metrics = demo / "health.html", demo / "flowsync.prom"
        steps = [
            ("report", "health", "--format", "table", "--db", str(db)),
            ("report", "unresolved", "--format", "table", "--db", str(db)),
            ("report", "errors", "--since", "7d", "--format", "table", "--db", str(db)),
            ("report", "failures", "--by", "deployment", "--format", "table", "--db", str(db)),
            ("report", "health", "--since", "7d", "--html", str(page), "--db", str(db)),
            (
                "report",
                "health",
                "--format",
                "openmetrics",
                "--output",
                str(metrics),
                "--db",
                str(db),
            ),
            ("plan", str(ROOT / "docs" / "examples" / "retention.yaml"), "--db", str(db)),
        ]
        for args in steps:
            try:
                flowsync(*args)
            except subprocess.CalledProcessError as e:
                print(f"(step failed with exit {e.returncode})", flush=True)
        print(
            f"\nOpen {page} in a browser. The file is {db}. Try:\n"
            f"  .venv/bin/flowsync report durations --by flow --db {db}\n"
            f'  .venv/bin/flowsync sql "SELECT * FROM unresolved_failures" --db {db}'
        )
        if a.keep:
            print(f"Server running at {server.url}; Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
