"""Benchmark: the cost of the rolling re-read (issue #11) in a scheduled incremental pull.

Every live run is re-read at least once per staleness window W (default 24 h),
spread over the pulls: at a 15-minute schedule each pull re-reads about
``live x 15 min / (0.85 W)`` runs by id, 200 per request. This measures, on a
copy of the fast-seeded home (``harness/fast_seed.py``): a full pull, a
no-change pull, and a no-change pull whose steady-state share of runs is due
(their ``synced_at`` moved back a day), and the same with a 100,000-run share
(about 1,200 runs, 7 requests) to estimate a 100k history.

    python -m bench.bench_staleness --runs 20000
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.bench_delete import publish, sh
from flowsync.api import PrefectClient
from flowsync.config import ApiSettings
from flowsync.store import Store
from flowsync.sync import PullOptions, pull
from harness.fast_seed import fast_seed
from harness.server import prefect_server


def share(live: int, interval_min: float = 15.0, window_h: float = 24.0) -> int:
    return math.ceil(live * interval_min / (0.85 * window_h * 60))


def make_due(store: Store, due: int) -> None:
    """Make ``due`` live runs a day old: the steady-state share of one scheduled pull."""
    store.execute(
        "UPDATE flow_runs SET synced_at = synced_at - INTERVAL 1 DAY WHERE id IN "
        "(SELECT id FROM flow_runs WHERE deleted_at IS NULL ORDER BY hash(id) LIMIT ?)",
        [due],
    )


def timed_pull(url: str, db: Path, due: int = 0) -> tuple[float, int, int]:
    with Store.writer(db, memory_limit_mb=0) as store:  # a bulk UPDATE: no write-job cap
        if due:
            make_due(store, due)
        with PrefectClient(ApiSettings(url=url)) as client:
            t = time.monotonic()
            result = pull(client, store, PullOptions())
            return time.monotonic() - t, result.requests, result.reread


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="append a markdown section here")
    a = p.parse_args()
    seeded = fast_seed(a.runs, log=lambda m: print(m, flush=True))
    work = Path(tempfile.mkdtemp(prefix="flowsync-bench-stale-"))
    home = work / "prefect"
    shutil.copytree(seeded.home, home)
    rows: dict[str, list[tuple[float, int, int]]] = {
        "full": [],
        "none": [],
        "share": [],
        "share100k": [],
    }
    with prefect_server(home=home) as server:
        db = work / "runs.duckdb"
        rows["full"].append(timed_pull(server.url, db))
        live = a.runs
        for _ in range(a.repeat):  # interleaved, so the machine's load hits each kind alike
            rows["none"].append(timed_pull(server.url, db))
            rows["share"].append(timed_pull(server.url, db, due=share(live)))
            rows["share100k"].append(timed_pull(server.url, db, due=share(100_000)))
    shutil.rmtree(work, ignore_errors=True)

    def med(kind: str) -> tuple[float, int, int]:
        got = sorted(rows[kind])
        return got[len(got) // 2]

    full, none, own, big = med("full"), med("none"), med("share"), med("share100k")
    per_request = (big[0] - none[0]) / max(1, big[1] - none[1])
    full100k = full[0] * 100_000 / a.runs
    est = none[0] + (big[0] - none[0])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(sh("cat", "/proc/loadavg").split()[:3])
    text = f"""
## Rolling re-read (issue #11): cost per scheduled pull

- Date: {when}; machine: {sh("nproc")} CPUs, Linux {platform.machine()}, Python {platform.python_version()};
  load average at the end {load} (other engineers' jobs running).
- Server: Prefect 3.8.8, SQLite; {a.runs} runs (fast-seeded); in-process pulls, medians of {a.repeat}, interleaved.
- Command: `python -m bench.bench_staleness --runs {a.runs} --repeat {a.repeat}`

| pull | seconds | requests | runs re-read |
|---|---:|---:|---:|
| full | {full[0]:.2f} | {full[1]} | – |
| no change, nothing due | {none[0]:.2f} | {none[1]} | {none[2]} |
| no change, the 15-min share of {a.runs:,} runs due | {own[0]:.2f} | {own[1]} | {own[2]} |
| no change, the 15-min share of 100,000 runs due | {big[0]:.2f} | {big[1]} | {big[2]} |

At {a.runs:,} runs a scheduled no-change pull with its share due costs {own[0] / full[0] * 100:.1f}% of a
full pull ({own[1] - none[1]} extra requests). Estimate for 100,000 runs (15-minute schedule, W = 24 h):
{big[1] - none[1]} extra requests per pull at about {per_request:.2f} s each (measured here); with a full pull
of 100k taking about {full100k:.0f} s (this machine's full pull scaled linearly), a no-change pull with its share is
about {est:.2f} s = **{est / full100k * 100:.1f}%** of a full pull (target <= 3%).
"""
    publish(text, a.out)


if __name__ == "__main__":
    main()
