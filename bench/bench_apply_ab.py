"""Benchmark: ``flowsync apply`` before and after a change, interleaved on one server.

For a change to apply's per-batch work (issue #11: a re-read and re-check before
every bulk call), the question is the ratio between two versions of flowsync on
the same data, on a machine others are loading. One server (a copy of the
fast-seeded home, see ``harness/fast_seed.py``), one pull, then ``rounds`` rounds;
each round deletes a fresh set of N runs with each version (order alternating
per round), every apply a whole subprocess on its own copy of the pulled file.
A bare ``DELETE /flow_runs/{id}`` loop over N more runs (the per-run recipe
without its pauses) runs between rounds for the ratio.

    python -m bench.bench_apply_ab --before /tmp/base/src --runs 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.bench_delete import (
    count,
    delete_loop,
    policy_text,
    publish,
    server_runs,
    sh,
    split_sets,
)
from harness.fast_seed import fast_seed
from harness.server import prefect_server

HERE = Path(__file__).resolve().parent.parent / "src"


def timed_apply(src: Path, url: str, db: Path, policy: Path) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowsync",
            "apply",
            str(policy),
            "--db",
            str(db),
            "--api-url",
            url,
            "--yes",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(
            f"flowsync apply ({src}) exited {proc.returncode}:\n{proc.stderr[-3000:]}\n{proc.stdout[-3000:]}"
        )
    return seconds, json.loads(proc.stdout)["result"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--before", type=Path, required=True, help="src/ of the flowsync version to compare against"
    )
    p.add_argument("--runs", type=int, default=1000, help="runs per apply")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="append a markdown section here")
    a = p.parse_args()
    n, rounds = a.runs, a.rounds
    sets_needed = 3 * rounds  # before, after, loop per round
    seeded = fast_seed(max(20000, sets_needed * n), log=lambda m: print(m, flush=True))
    work = Path(tempfile.mkdtemp(prefix="flowsync-bench-ab-"))
    home = work / "prefect"
    shutil.copytree(seeded.home, home)
    times: dict[str, list[float]] = {"before": [], "after": [], "loop": []}
    results: dict[str, list[dict[str, object]]] = {"before": [], "after": []}
    with prefect_server(home=home) as server:
        url = server.url
        runs = server_runs(url)
        sets = split_sets(runs, n, sets=sets_needed)
        assert all(len(s) == n for s in sets)
        db0 = work / "pulled.duckdb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "flowsync",
                "pull",
                "--api-url",
                url,
                "--db",
                str(db0),
                "--quiet",
            ],
            check=True,
            env={**os.environ, "PYTHONPATH": str(HERE)},
        )
        for r in range(rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for k, which in enumerate(order):
                ids = sets[3 * r + k]
                db = work / f"{which}-{r}.duckdb"
                shutil.copy(db0, db)
                policy = work / f"{which}-{r}.yaml"
                policy.write_text(policy_text(ids))
                seconds, result = timed_apply(
                    a.before if which == "before" else HERE, url, db, policy
                )
                assert count(url, ids) == 0
                times[which].append(seconds)
                results[which].append(result)
                print(
                    f"round {r + 1} {which}: {seconds:.2f}s, {result.get('batches')} batches, "
                    f"{result.get('calls')} calls, one call at a time after batch "
                    f"{result.get('one_call_at_a_time_after_batch', '-')}",
                    flush=True,
                )
            loop_s, _retries, _slept = delete_loop(url, sets[3 * r + 2])
            times["loop"].append(loop_s)
            print(f"round {r + 1} DELETE loop: {loop_s:.2f}s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    slower = med["after"] / med["before"] - 1
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(sh("cat", "/proc/loadavg").split()[:3])
    rows = "\n".join(
        f"| {r + 1} | {times['before'][r]:.2f} | {times['after'][r]:.2f} | {times['loop'][r]:.2f} |"
        for r in range(rounds)
    )
    after = results["after"][0]
    text = f"""
## Re-check before every call (issue #11): apply before vs after, interleaved

- Date: {when}; machine: {sh("nproc")} CPUs, Linux {platform.machine()}, Python {platform.python_version()};
  load average at the end {load} (other engineers' jobs running).
- Server: Prefect 3.8.8, SQLite, one server; {len(runs)} runs; each apply deletes its own N = {n} runs
  (a fresh set per apply, the same state mix), as a whole subprocess on its own copy of the pulled file.
- Command: `python -m bench.bench_apply_ab --before <src of the previous commit> --runs {n} --rounds {rounds}`

| round | before (s) | after (s) | bare DELETE loop, N runs (s) |
|---:|---:|---:|---:|
{rows}

Medians: before {med["before"]:.2f} s, after {med["after"]:.2f} s: apply is **{slower * 100:+.0f}%** (target: at
most +15%). The bare per-run DELETE loop takes {med["loop"] / med["after"]:.1f}x as long as the new apply
(target: >= 5x). Per apply after the change: {after.get("batches")} batches, {after.get("calls")} bulk calls,
{after.get("rereads")} re-reads.
"""
    publish(text, a.out)


if __name__ == "__main__":
    main()
