"""Benchmark: delete N runs with ``flowsync apply`` (bulk_delete) vs a per-run DELETE loop.

One real Prefect server, seeded once with 2 x N runs; the runs are split into
two halves with the same state mix. Half A is deleted by ``flowsync apply`` of
a delete policy that names its ids (plan, 50-id bulk_delete calls with the
state guard, audit rows, local refresh: the whole command, timed as a
subprocess); half B by an httpx loop of ``DELETE /flow_runs/{id}``, the way
Prefect's own cleanup recipe deletes runs one at a time. Both halves are then
checked gone with ``POST /flow_runs/count``.

    python -m bench.bench_delete --runs 5000 --out bench/results/delete.md
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.seed import seed
from bench.server import prefect_server


def split_halves(runs: dict[str, str]) -> tuple[list[str], list[str]]:
    """Two equal halves with the same state mix (within one run per state): alternate over runs sorted by state."""
    ordered = [run_id for run_id, _ in sorted(runs.items(), key=lambda kv: (kv[1], kv[0]))]
    return ordered[0::2], ordered[1::2]


def policy_text(ids: list[str]) -> str:
    id_list = ",\n        ".join(f"'{i}'" for i in ids)
    return f"""version: 1
max_actions: {len(ids)}
rules:
  - name: bench-delete-half-a
    action: delete
    sql: |
      SELECT id FROM flow_runs WHERE deleted_at IS NULL AND CAST(id AS VARCHAR) IN (
        {id_list})
"""


def delete_loop(url: str, ids: list[str]) -> tuple[float, int, float]:
    """DELETE /flow_runs/{id} one at a time; retries 5xx (SQLite 'database is locked').

    Returns (seconds, retries, seconds spent sleeping between retries).
    """
    retries = 0
    slept = 0.0
    began = time.monotonic()
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        for run_id in ids:
            for _attempt in range(20):
                try:
                    r = c.delete(f"flow_runs/{run_id}")
                    if r.status_code in (200, 204, 404):
                        break
                except httpx.TransportError:
                    pass  # e.g. a dropped keep-alive connection: send it again
                retries += 1
                time.sleep(0.05)
                slept += 0.05
            else:
                raise RuntimeError(f"DELETE flow_runs/{run_id} kept failing")
    return time.monotonic() - began, retries, slept


def count(url: str, ids: list[str] | None = None) -> int:
    body = {"flow_runs": {"id": {"any_": ids}}} if ids is not None else {}
    r = httpx.post(f"{url}/flow_runs/count", json=body, timeout=60)
    r.raise_for_status()
    return int(r.json())


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5000, help="runs per half")
    p.add_argument("--out", type=Path, default=Path("bench/results/delete.md"))
    a = p.parse_args()
    n = a.runs
    work = Path(tempfile.mkdtemp(prefix="flowsync-bench-delete-"))
    with prefect_server(home=work / "prefect") as server:
        url = server.url
        t = time.monotonic()
        seeded = seed(url, runs=2 * n, flows=4, deployments_per_flow=2, days=60, seed_value=11)
        seed_s = time.monotonic() - t
        print(f"seeded {len(seeded.runs)} runs in {seed_s:.0f}s", flush=True)
        half_a, half_b = split_halves(seeded.runs)
        assert len(half_a) == len(half_b) == n, (len(half_a), len(half_b))
        db = work / "runs.duckdb"
        policy = work / "delete-half-a.yaml"
        policy.write_text(policy_text(half_a))
        flowsync = [sys.executable, "-m", "flowsync"]
        t = time.monotonic()
        subprocess.run([*flowsync, "pull", "--api-url", url, "--db", str(db), "--quiet"], check=True)
        pull_s = time.monotonic() - t
        print(f"pulled in {pull_s:.1f}s", flush=True)

        t = time.monotonic()
        proc = subprocess.run(
            [*flowsync, "apply", str(policy), "--db", str(db), "--api-url", url, "--yes", "--json"],
            capture_output=True, text=True,
        )
        apply_s = time.monotonic() - t
        if proc.returncode != 0:
            raise SystemExit(f"flowsync apply exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        print(f"flowsync apply: {apply_s:.1f}s", flush=True)
        print(proc.stdout[-600:], flush=True)

        loop_s, loop_retries, loop_slept = delete_loop(url, half_b)
        print(f"DELETE loop: {loop_s:.1f}s ({loop_retries} retries, {loop_slept:.1f}s asleep)", flush=True)

        left_a = count(url, half_a)
        left_b = count(url, half_b)
        left_all = count(url)
    assert left_a == 0 and left_b == 0, (left_a, left_b)

    cpus = sh("nproc")
    mem = sh("free", "-h").splitlines()
    mem_total = mem[1].split()[1] if len(mem) > 1 else "?"
    speedup = loop_s / apply_s
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = f"""# Deleting runs: `flowsync apply` (bulk_delete) vs a per-run DELETE loop

- Date: {now}
- Machine: {cpus} CPUs (`nproc`), {mem_total} RAM (`free -h`), {platform.system()} {platform.machine()},
  Python {platform.python_version()}; the 2 cores were shared with other engineers' work at the time.
- Server: Prefect 3.8.8 (`prefect server start`, SQLite, background services off), same process for both.
- N = {n} runs per half, seeded once as {2 * n} runs ({seed_s:.0f}s) and split into two halves
  with the same state mix; pulled once ({pull_s:.1f}s, not counted).
- Command: `python -m bench.bench_delete --runs {n}`

| method | runs | seconds | runs/s |
|---|---:|---:|---:|
| `flowsync apply --yes` (plan + bulk_delete x50 with state guard + audit + local update) | {n} | {apply_s:.1f} | {n / apply_s:,.0f} |
| httpx loop of `DELETE /flow_runs/{{id}}` ({loop_retries} retries after 5xx, {loop_slept:.1f}s of it asleep) | {n} | {loop_s:.1f} | {n / loop_s:,.0f} |
| **speed-up** | | **{speedup:.1f}x** ({(loop_s - loop_slept) / apply_s:.1f}x without the loop's retry sleeps) | |

Verified with `POST /flow_runs/count`: {left_a} of half A and {left_b} of half B left
({left_all} runs left on the server).

Notes: `flowsync apply` is timed as a whole subprocess (interpreter start, plan over
the DuckDB file, {-(-n // 50)}+ bulk calls, audit rows, and marking the {n} runs deleted
locally from the answers). The loop retries a 5xx (the SQLite server answers 500
"database is locked" under its own background log clean-up) after 50 ms. The loop ran second, on a server holding N instead of
2N runs, which favours it slightly.
"""
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
