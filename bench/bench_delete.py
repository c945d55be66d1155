"""Benchmark: delete N runs with ``flowsync apply`` (bulk_delete) vs per-run DELETE loops.

One real Prefect server holding 3 x N runs or more (a copy of a fast-seeded home,
see ``harness/fast_seed.py``), split into three sets with the same state mix:

A. ``flowsync apply`` of a delete policy that names set A's ids: plan, 50-id
   ``bulk_delete`` calls with the state guard, audit rows, local refresh; the
   whole command, timed as a subprocess.
B. A bare httpx loop of ``DELETE /flow_runs/{id}``, as fast as the server
   answers (retrying a 5xx after 50 ms): the strictest per-run baseline.
C. Prefect's own retention recipe ("Data retention with a custom flow" in the
   database-maintenance guide) with its pacing as published: read a batch of
   100 runs, ``DELETE`` each, pause 0.5 s after every 10th deletion and 1 s
   between batches; a failed delete is retried by the next batch's read.

All three sets are then checked gone with ``POST /flow_runs/count``.

    python -m bench.bench_delete --runs 5000 --out bench/results/delete.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from harness.fast_seed import fast_seed
from harness.server import prefect_server


def split_sets(runs: dict[str, str], n: int, sets: int = 3) -> list[list[str]]:
    """``sets`` lists of ``n`` runs with the same state mix: deal runs sorted by state round-robin."""
    ordered = [run_id for run_id, _ in sorted(runs.items(), key=lambda kv: (kv[1], kv[0]))]
    return [ordered[i::sets][:n] for i in range(sets)]


def server_runs(url: str) -> dict[str, str]:
    """Every run id on the server with its state type."""
    out: dict[str, str] = {}
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        offset = 0
        while True:
            r = c.post("flow_runs/filter", json={"sort": "ID_DESC", "limit": 200, "offset": offset})
            r.raise_for_status()
            page = r.json()
            out.update((o["id"], o["state_type"]) for o in page)
            if len(page) < 200:
                return out
            offset += len(page)


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


def recipe_loop(url: str, ids: list[str], batch_size: int = 100) -> tuple[float, int, float]:
    """Prefect's published retention recipe, pacing included, over exactly these runs.

    The recipe reads ``batch_size`` runs with its filter, deletes them one at a
    time with ``client.delete_flow_run`` (a ``DELETE /flow_runs/{id}``), sleeps
    0.5 s whenever its per-batch count of deletions is a multiple of 10, logs
    and skips a failed delete, and sleeps 1 s before reading the next batch,
    until a read comes back empty. Here the read names the remaining ids of
    this set instead of a time filter, so it deletes exactly this set.

    Returns (seconds, failed deletes, seconds asleep).
    """
    remaining = list(ids)
    failed = 0
    slept = 0.0
    began = time.monotonic()
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        while True:
            r = c.post(
                "flow_runs/filter",
                json={"flow_runs": {"id": {"any_": remaining[:batch_size]}}, "limit": batch_size},
            )
            r.raise_for_status()
            batch = [o["id"] for o in r.json()]
            if not batch:
                break
            deleted_in_batch = 0
            for run_id in batch:
                try:
                    res = c.delete(f"flow_runs/{run_id}")
                    ok = res.status_code in (
                        200,
                        204,
                        404,
                    )  # 404: ObjectNotFound, counted as deleted
                except httpx.TransportError:
                    ok = False
                if ok:
                    deleted_in_batch += 1
                    remaining.remove(run_id)
                else:
                    failed += 1
                if deleted_in_batch % 10 == 0:
                    time.sleep(0.5)
                    slept += 0.5
            time.sleep(1.0)
            slept += 1.0
    return time.monotonic() - began, failed, slept


def count(url: str, ids: list[str] | None = None) -> int:
    body = {"flow_runs": {"id": {"any_": ids}}} if ids is not None else {}
    r = httpx.post(f"{url}/flow_runs/count", json=body, timeout=60)
    r.raise_for_status()
    return int(r.json())


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()


def publish(text: str, out: Path | None) -> None:
    """Print a results section and, given ``out``, append it to that file."""
    print(text)
    if out:
        with out.open("a") as f:
            f.write(text)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5000, help="runs per method")
    p.add_argument("--out", type=Path, default=Path("bench/results/delete.md"))
    a = p.parse_args()
    n = a.runs
    seeded = fast_seed(max(20000, 3 * n), log=lambda m: print(m, flush=True))
    work = Path(tempfile.mkdtemp(prefix="flowsync-bench-delete-"))
    home = work / "prefect"
    t = time.monotonic()
    shutil.copytree(seeded.home, home)  # the cached home stays untouched
    copy_s = time.monotonic() - t
    with prefect_server(home=home) as server:
        url = server.url
        runs = server_runs(url)
        total = len(runs)
        set_a, set_b, set_c = split_sets(runs, n)
        assert len(set_a) == len(set_b) == len(set_c) == n, (len(set_a), len(set_b), len(set_c))
        print(
            f"{total} runs on the server ({seeded.home.name}, copied in {copy_s:.1f}s)", flush=True
        )
        db = work / "runs.duckdb"
        policy = work / "delete-set-a.yaml"
        policy.write_text(policy_text(set_a))
        flowsync = [sys.executable, "-m", "flowsync"]
        t = time.monotonic()
        subprocess.run(
            [*flowsync, "pull", "--api-url", url, "--db", str(db), "--quiet"], check=True
        )
        pull_s = time.monotonic() - t
        print(f"pulled in {pull_s:.1f}s", flush=True)

        t = time.monotonic()
        proc = subprocess.run(
            [*flowsync, "apply", str(policy), "--db", str(db), "--api-url", url, "--yes", "--json"],
            capture_output=True,
            text=True,
        )
        apply_s = time.monotonic() - t
        if proc.returncode != 0:
            raise SystemExit(f"flowsync apply exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        print(f"flowsync apply: {apply_s:.1f}s", flush=True)

        loop_s, loop_retries, loop_slept = delete_loop(url, set_b)
        print(
            f"DELETE loop: {loop_s:.1f}s ({loop_retries} retries, {loop_slept:.1f}s asleep)",
            flush=True,
        )
        recipe_s, recipe_failed, recipe_slept = recipe_loop(url, set_c)
        print(
            f"recipe: {recipe_s:.1f}s ({recipe_failed} failed deletes, {recipe_slept:.1f}s asleep)",
            flush=True,
        )

        left = [count(url, s) for s in (set_a, set_b, set_c)]
        left_all = count(url)
    shutil.rmtree(work, ignore_errors=True)
    assert left == [0, 0, 0], left

    cpus = sh("nproc")
    mem = sh("free", "-h").splitlines()
    mem_total = mem[1].split()[1] if len(mem) > 1 else "?"
    load = sh("cat", "/proc/loadavg").split()[:3]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = f"""# Deleting runs: `flowsync apply` (bulk_delete) vs per-run DELETE loops

- Date: {now}
- Machine: {cpus} CPUs (`nproc`), {mem_total} RAM (`free -h`), {platform.system()} {platform.machine()},
  Python {platform.python_version()}; load average at the end {" / ".join(load)}.
- Server: Prefect 3.8.8 (`prefect server start`, SQLite, background services off), one server for all three.
- Data: a copy of the fast-seeded home `bench/.work/{seeded.home.name}` ({total} runs); three sets of
  N = {n} runs with the same state mix; pulled once ({pull_s:.1f}s, not counted).
- Command: `python -m bench.bench_delete --runs {n}`

| method | runs | seconds | runs/s | `flowsync apply` is |
|---|---:|---:|---:|---:|
| A. `flowsync apply --yes` (plan + bulk_delete x50 with state guard + audit + local update) | {n} | {apply_s:.1f} | {n / apply_s:,.0f} | |
| B. bare httpx loop of `DELETE /flow_runs/{{id}}` ({loop_retries} retries after 5xx, {loop_slept:.1f}s of it asleep) | {n} | {loop_s:.1f} | {n / loop_s:,.0f} | **{loop_s / apply_s:.1f}x faster** |
| C. Prefect's retention recipe as published (per-run DELETE, its pauses: {recipe_slept:.0f}s of it asleep; {recipe_failed} failed deletes retried) | {n} | {recipe_s:.1f} | {n / recipe_s:,.0f} | **{recipe_s / apply_s:.1f}x faster** |

Verified with `POST /flow_runs/count`: {left[0]} / {left[1]} / {left[2]} runs of sets A / B / C left
({left_all} runs left on the server).

Notes: `flowsync apply` is timed as a whole subprocess (interpreter start, plan over
the DuckDB file, {-(-n // 50)}+ bulk calls, audit rows, and marking the {n} runs deleted
locally from the answers). The methods run in the order A, B, C on one server, so each
later one finds fewer runs on it, which favours B and C slightly. B without its sleeps is
the strictest per-run baseline: no client can delete one run per request faster than the
server answers. C is what a user following Prefect's guide runs today.
"""
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
