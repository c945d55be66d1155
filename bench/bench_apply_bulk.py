"""Benchmark: ``flowsync apply`` against the fastest any client can delete through the API.

The yardstick is a bare loop of ``POST /flow_runs/bulk_delete`` calls, 50
explicit ids each, with no checks: the server's own bulk delete, one call after
the other. On a PostgreSQL-backed Prefect server (``harness.pg_seed`` seeds
``--runs`` runs once into a kept cluster; each benchmark runs on a fresh copy of
that database, so the kept one is never changed), flowsync pulls every run into
a new file (or copies the file an earlier run pulled from the same seed, kept
beside the cluster as ``pulled.duckdb``), then the two contenders delete
``--deletions`` runs each, interleaved in ``--rounds`` chunks (loop, apply,
apply, loop, ...). The runs are dealt into buckets by ``hash(id)``, each about
one chunk (so every chunk has the server's state mix); each chunk is one bucket:

- **bare loop**: httpx, one connection, ``bulk_delete`` of 50 ids, nothing else.
- **apply**: a delete policy whose rule selects the chunk's bucket
  (``hash(id) % buckets = k``: a predicate over each run's own row, as cheap to
  evaluate as a retention rule's age and state test), planned and applied as
  ``flowsync apply`` does (``load_policy``/``parse_policy``, ``make_plan`` on
  the live file, ``apply_plan`` on a sandboxed, memory-capped ``Store`` with a
  ``PrefectClient``): per batch a re-read, the re-check, the call, the audit.
  The publish the CLI does after apply is timed apart.

Reported: runs/s of each, the ratio apply / loop, and apply's time per batch
split into the time waiting for the server (every request timed at the
transport, ``PrefectClient(transport=...)``) and the client's own time (the
rest of the wall time; and its process CPU).

    python -m bench.bench_apply_bulk --runs 4000 --deletions 1000 --workers 1 --rounds 4

Until 2026-12-04 evening the rule listed the chunk's ids as 25,000 string literals
(``CAST(id AS VARCHAR) IN (...)``): at a million runs DuckDB spent 115-200 ms of
every batch's decision evaluating that list, a cost of the benchmark's rule, not
of apply (a predicate rule over the same file: 5 ms).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from bench.bench_delete import count, publish, sh
from flowsync.api import PrefectClient
from flowsync.config import resolve_api
from flowsync.policy import apply_plan, make_plan, parse_policy
from flowsync.store import Store
from flowsync.store.snapshot import publish as publish_snapshot
from flowsync.sync import pull
from harness.pg_seed import pg_cluster_at, pg_fast_seed, pg_server

BULK = 50


class TimedTransport(httpx.HTTPTransport):
    """Adds up the time of every request until its body is read (the server's share)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self.requests = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t = time.perf_counter()
        response = super().handle_request(request)
        response.read()
        with self._lock:
            self.seconds += time.perf_counter() - t
            self.requests += 1
        return response


def bare_loop(url: str, ids: list[str]) -> dict[str, Any]:
    """``bulk_delete`` of 50 explicit ids at a time, one call after the other, no checks."""
    calls: list[float] = []
    began = time.perf_counter()
    with httpx.Client(base_url=url + "/", timeout=120) as c:
        for i in range(0, len(ids), BULK):
            chunk = ids[i : i + BULK]
            t = time.perf_counter()
            r = c.post(
                "flow_runs/bulk_delete",
                json={"flow_runs": {"id": {"any_": chunk}}, "limit": len(chunk)},
            )
            r.raise_for_status()
            calls.append(time.perf_counter() - t)
    return {"seconds": time.perf_counter() - began, "calls": len(calls), "per_call": calls}


def policy_text(buckets: int, bucket: int, runs: int) -> str:
    return f"""version: 1
max_actions: {runs}
rules:
  - name: bench-delete-bucket-{bucket}
    action: delete
    sql: |
      SELECT id FROM flow_runs WHERE deleted_at IS NULL AND hash(id) % {buckets} = {bucket}
"""


def flowsync_apply(url: str, db: Path, policy: str, profile: Path | None) -> dict[str, Any]:
    """Plan and apply a delete policy the way ``flowsync apply --yes`` does."""
    loaded = parse_policy(policy.encode(), "bench-bucket")
    settings = resolve_api(url, None)
    transport = TimedTransport()
    cpu0, began = time.process_time(), time.perf_counter()
    with Store.sandboxed(db, live=True) as store:
        plan = make_plan(store, loaded)
    planned = time.perf_counter() - began
    with (
        Store.sandboxed_writer(db) as store,
        PrefectClient(settings, transport=transport) as client,
    ):
        t = time.perf_counter()
        profiler = cProfile.Profile() if profile else None
        with store.memory_guard():
            if profiler:
                profiler.enable()
            thread_cpu = time.thread_time()
            result = apply_plan(client, store, plan)
            thread_cpu = time.thread_time() - thread_cpu
            if profiler:
                profiler.disable()
                profiler.dump_stats(profile)
        applied = time.perf_counter() - t
        cpu = time.process_time() - cpu0
        t = time.perf_counter()
        publish_snapshot(store)
        published = time.perf_counter() - t
    if result.status != "success":
        raise RuntimeError(f"apply ended {result.status}: {result.errors}")
    return {
        "seconds": planned + applied,  # what the user waits for, publish apart
        "plan_s": planned,
        "apply_s": applied,
        "publish_s": published,
        "batches": result.batches,
        "calls": result.calls,
        "rereads": result.rereads,
        "requests": transport.requests,
        "server_s": transport.seconds,
        "client_s": applied - transport.seconds,
        "cpu_s": cpu,
        "thread_cpu_s": thread_cpu,  # the apply's own thread (the calls' threads wait on HTTP)
        "done": result.done,
        "decided_ahead": getattr(result, "decided_ahead", 0),  # 0 before the head start existed
        # the first batch whose answer the server lost (None: none lost, or before it existed)
        "one_call_after": getattr(result, "one_call_after", None),
        "window_p50": statistics.median(result.windows) if result.windows else None,
        "window_max": max(result.windows) if result.windows else None,
    }


def victims(db: Path, buckets: int, sets: int) -> list[list[str]]:
    """The live runs of buckets 0 .. ``sets`` - 1 (``hash(id) % buckets``), one list each."""
    with Store.reader(db, live=True) as store:
        rows = store.execute(
            "SELECT hash(id) % ? AS b, list(CAST(id AS VARCHAR) ORDER BY id) FROM flow_runs "
            "WHERE deleted_at IS NULL AND hash(id) % ? < ? GROUP BY b ORDER BY b",
            [buckets, buckets, sets],
        ).rows()
    if len(rows) < sets:
        raise SystemExit(f"only {len(rows)} of {sets} buckets hold runs: too few runs")
    return [list(r[1]) for r in rows]


def pulled_file(url: str, db: Path, root: Path, log: Any) -> None:
    """The file of every run: a copy of the one pulled from this seed before, or a pull."""
    kept = root / "pulled.duckdb"
    stamp = root / "pulled.json"
    seed = (root / "pg_seed.json").read_text()
    before = json.loads(stamp.read_text()) if stamp.exists() else {}
    if kept.exists() and before.get("seed") == seed:
        shutil.copyfile(kept, db)
        log(f"copied the file pulled from this seed before (that pull: {before['pull_s']:.1f}s)")
        return
    t = time.perf_counter()
    with Store.writer(db) as store, PrefectClient(resolve_api(url, None)) as client:
        pulled = pull(client, store)
    seconds = time.perf_counter() - t
    log(f"pulled {pulled.inserted} runs in {seconds:.1f}s")
    shutil.copyfile(db, kept)
    stamp.write_text(json.dumps({"seed": seed, "pull_s": seconds}))


@contextmanager
def fresh_server(runs: int, workers: int, log: Any) -> Any:
    """A server on a fresh copy of the seeded database (the kept one is never changed), and
    the folder of the kept cluster."""
    seeded = pg_fast_seed(runs, log=log)
    with pg_cluster_at(seeded.root) as cluster, pg_server(cluster, workers, copy=True) as server:
        yield server, seeded.root


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=4000, help="runs on the server (and in the file)")
    p.add_argument("--deletions", type=int, default=1000, help="runs each contender deletes")
    p.add_argument("--workers", type=int, choices=(1, 2), default=1, help="API workers")
    p.add_argument("--rounds", type=int, default=4, help="interleaved chunks per contender")
    p.add_argument("--out", type=Path, default=None, help="append the markdown section here")
    p.add_argument(
        "--profile", type=Path, default=None, help="cProfile each apply into PROFILE.<round>"
    )
    a = p.parse_args()

    def log(msg: str) -> None:
        print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", flush=True)

    chunk = a.deletions // a.rounds
    buckets = a.runs // chunk  # each bucket about one chunk
    work = Path(tempfile.mkdtemp(prefix="flowsync-apply-bulk-"))
    db = work / "runs.duckdb"
    loop_rows: list[dict[str, Any]] = []
    apply_rows: list[dict[str, Any]] = []
    began = datetime.now(timezone.utc)
    loads = [os.getloadavg()[0]]
    with fresh_server(a.runs, a.workers, log) as (server, root):
        url = server.url
        pulled_file(url, db, root, log)
        loop_sets = victims(db, buckets, 2 * a.rounds)
        for r in range(a.rounds):
            order = ["loop", "apply"] if r % 2 == 0 else ["apply", "loop"]
            for k, which in enumerate(order):
                ids = loop_sets[2 * r + k]
                if which == "loop":
                    row = bare_loop(url, ids)
                    row["runs"] = len(ids)
                    loop_rows.append(row)
                else:
                    bucket = 2 * r + k
                    profile = a.profile.with_suffix(f".{r + 1}") if a.profile else None
                    row = flowsync_apply(url, db, policy_text(buckets, bucket, len(ids)), profile)
                    if row["done"] != len(ids):
                        raise RuntimeError(
                            f"apply did {row['done']} of bucket {bucket}'s {len(ids)} runs"
                        )
                    row["runs"] = len(ids)
                    apply_rows.append(row)
                left = count(url, ids)
                if left:
                    raise RuntimeError(f"{which} left {left} of its {len(ids)} runs on the server")
                loads.append(os.getloadavg()[0])
                log(
                    f"round {r + 1} {which}: {len(ids)} runs in {row['seconds']:.2f}s "
                    f"({len(ids) / row['seconds']:.0f} runs/s)"
                )
        total = count(url)

    loop_n, apply_n = (sum(r["runs"] for r in rows) for rows in (loop_rows, apply_rows))
    loop_s = sum(r["seconds"] for r in loop_rows)
    apply_s = sum(r["seconds"] for r in apply_rows)
    batches = sum(r["batches"] for r in apply_rows)
    loop_rate, apply_rate = loop_n / loop_s, apply_n / apply_s
    server_s = sum(r["server_s"] for r in apply_rows)
    client_s = sum(r["client_s"] for r in apply_rows)
    plan_s = sum(r["plan_s"] for r in apply_rows)
    cpu_s = sum(r["cpu_s"] for r in apply_rows)
    thread_cpu_s = sum(r.get("thread_cpu_s", 0.0) for r in apply_rows)
    publish_s = statistics.median(r["publish_s"] for r in apply_rows)
    calls = [c for r in loop_rows for c in r["per_call"]]
    ahead = sum(r["decided_ahead"] for r in apply_rows)
    window_p50 = statistics.median(r["window_p50"] for r in apply_rows)
    window_max = max(r["window_max"] for r in apply_rows)
    rounds_md = "\n".join(
        f"| {i + 1} | {lr['runs'] / lr['seconds']:,.0f} | {ar['runs'] / ar['seconds']:,.0f} | "
        f"{(ar['runs'] / ar['seconds']) / (lr['runs'] / lr['seconds']):.2f}x |"
        for i, (lr, ar) in enumerate(zip(loop_rows, apply_rows, strict=True))
    )
    text = f"""
### apply against the bare bulk loop: {a.runs:,} runs, {a.workers} API worker{"s" if a.workers > 1 else ""}

- Date: {began:%Y-%m-%d %H:%M}-{datetime.now(timezone.utc):%H:%M} UTC; machine: {sh("nproc")} cores, Linux
  {platform.machine()}, Python {platform.python_version()}; load average {min(loads):.1f}-{max(loads):.1f}
  during the run (1-minute, sampled between contenders).
- Server: Prefect 3.8.8 on PostgreSQL (a fresh copy of the `harness.pg_seed` database of {a.runs:,}
  runs), {a.workers} API worker{"s" if a.workers > 1 else ""}; {total:,} runs left at the end.
- Command: `python -m bench.bench_apply_bulk --runs {a.runs} --deletions {a.deletions} --workers {a.workers} --rounds {a.rounds}`
- The loop deleted {loop_n:,} runs and apply {apply_n:,} (different runs, the same state mix: buckets
  of `hash(id) % {buckets}`, about {chunk:,} runs each), in {a.rounds} interleaved chunks each.

| round | bare loop runs/s | apply runs/s | apply / loop |
|---:|---:|---:|---:|
{rounds_md}

| contender | runs | seconds | runs/s | per batch of 50 |
|---|---:|---:|---:|---|
| bare `bulk_delete` loop | {loop_n:,} | {loop_s:.1f} | {loop_rate:,.0f} | {loop_s / len(calls) * 1000:.0f} ms a call (median {statistics.median(calls) * 1000:.0f} ms) |
| `flowsync apply` | {apply_n:,} | {apply_s:.1f} | {apply_rate:,.0f} | {apply_s / batches * 1000:.0f} ms: requests {server_s / batches * 1000:.0f} ms ({sum(r["requests"] for r in apply_rows) / batches:.1f} requests), client {client_s / batches * 1000:.0f} ms, CPU {cpu_s / batches * 1000:.0f} ms (apply thread {thread_cpu_s / batches * 1000:.0f} ms) |

**apply / bare loop: {apply_rate / loop_rate:.2f}x.** apply's time includes planning
({plan_s:.2f} s over {a.rounds} plans) and not the snapshot it publishes afterwards
({publish_s:.3f} s median). "requests" is the time of apply's HTTP requests, added up (two
may be out at once: a call in flight while the next batch is re-read and sent); "client" is
apply's wall time minus that sum (below zero when requests overlap); "CPU" its process CPU
(all threads, planning included), and of it the apply's own thread (every file access and
decision; a call's thread only waits on HTTP).
Bulk calls: {sum(r["calls"] for r in apply_rows):,} for {batches:,} batches; a lost answer (then one call at a
time for 20 batches) first at batch {", ".join(str(r.get("one_call_after") or "-") for r in apply_rows)} (by round).
Batches sent on a decision made ahead: {ahead:,} of {batches:,}. Re-read -> call window:
median {window_p50 * 1000:.0f} ms (of the rounds' medians), max {window_max * 1000:.0f} ms.
"""
    publish(text, a.out)


if __name__ == "__main__":
    main()
