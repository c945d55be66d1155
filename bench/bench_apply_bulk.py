"""Benchmark: ``flowsync apply`` against the fastest any client can delete through the API.

The yardstick is a bare loop of ``POST /flow_runs/bulk_delete`` calls, 50
explicit ids each, with no checks: the server's own bulk delete, one call after
the other. On a PostgreSQL-backed Prefect server (``harness.pg_seed`` seeds
``--runs`` runs once into a kept cluster; each benchmark runs on a fresh copy of
that database, so the kept one is never changed), flowsync pulls every run into
a new file, then the two contenders delete ``--deletions`` runs each, different
runs with the same state mix, interleaved in ``--rounds`` chunks (loop, apply,
apply, loop, ...):

- **bare loop**: httpx, one connection, ``bulk_delete`` of 50 ids, nothing else.
- **apply**: a delete policy naming the chunk's runs, planned and applied as
  ``flowsync apply`` does (``load_policy``/``parse_policy``, ``make_plan`` on
  the live file, ``apply_plan`` on a sandboxed, memory-capped ``Store`` with a
  ``PrefectClient``): per batch a re-read, the re-check, the call, the audit.
  The publish the CLI does after apply is timed apart.

Reported: runs/s of each, the ratio apply / loop, and apply's time per batch
split into the time waiting for the server (every request timed at the
transport, ``PrefectClient(transport=...)``) and the client's own time (the
rest of the wall time; and its process CPU).

    python -m bench.bench_apply_bulk --runs 4000 --deletions 1000 --workers 1 --rounds 4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from bench.bench_delete import count, policy_text, publish, sh
from flowsync.api import PrefectClient
from flowsync.config import resolve_api
from flowsync.policy import apply_plan, make_plan, parse_policy
from flowsync.store import Store
from flowsync.store.snapshot import publish as publish_snapshot
from flowsync.sync import pull
from harness.pg_seed import DATABASE, pg_cluster_at, pg_fast_seed
from harness.server import postgres_server

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


def flowsync_apply(url: str, db: Path, ids: list[str]) -> dict[str, Any]:
    """Plan and apply a delete policy over ``ids`` the way ``flowsync apply --yes`` does."""
    loaded = parse_policy(policy_text(ids).encode(), f"bench-{len(ids)}")
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
        with store.memory_guard():
            result = apply_plan(client, store, plan)
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
        "done": result.done,
    }


def victims(db: Path, n: int, sets: int) -> list[list[str]]:
    """``sets`` lists of ``n`` runs with the same state mix (runs dealt round-robin by state)."""
    with Store.reader(db, live=True) as store:
        rows = store.execute(
            "SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE deleted_at IS NULL ORDER BY state_type, id"
        ).rows()
    ordered = [r[0] for r in rows]
    out = [ordered[i::sets][:n] for i in range(sets)]
    if any(len(s) < n for s in out):
        raise SystemExit(f"the server holds {len(ordered)} runs: too few for {sets} x {n}")
    return out


@contextmanager
def fresh_server(runs: int, workers: int, log: Any) -> Any:
    """A server on a fresh copy of the seeded database (the kept one is never changed)."""
    seeded = pg_fast_seed(runs, log=log)
    with pg_cluster_at(seeded.root) as cluster:
        copy = cluster.create_database(f"bench_apply_{os.getpid()}", template=DATABASE)
        try:
            backend = "postgres" if workers == 1 else "postgres-2w"
            with postgres_server(
                cluster.url(copy), workers, backend=backend, timeout=300
            ) as server:
                yield server
        finally:
            cluster.drop_database(copy)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=4000, help="runs on the server (and in the file)")
    p.add_argument("--deletions", type=int, default=1000, help="runs each contender deletes")
    p.add_argument("--workers", type=int, choices=(1, 2), default=1, help="API workers")
    p.add_argument("--rounds", type=int, default=4, help="interleaved chunks per contender")
    p.add_argument("--out", type=Path, default=None, help="append the markdown section here")
    a = p.parse_args()

    def log(msg: str) -> None:
        print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", flush=True)

    chunk = a.deletions // a.rounds
    if chunk % BULK:
        raise SystemExit(f"--deletions / --rounds = {chunk}: make it a multiple of {BULK}")
    work = Path(tempfile.mkdtemp(prefix="flowsync-apply-bulk-"))
    db = work / "runs.duckdb"
    loop_rows: list[dict[str, Any]] = []
    apply_rows: list[dict[str, Any]] = []
    began = datetime.now(timezone.utc)
    loads = [os.getloadavg()[0]]
    with fresh_server(a.runs, a.workers, log) as server:
        url = server.url
        t = time.perf_counter()
        with Store.writer(db) as store, PrefectClient(resolve_api(url, None)) as client:
            pulled = pull(client, store)
        log(f"pulled {pulled.inserted} runs in {time.perf_counter() - t:.1f}s")
        loop_sets = victims(db, chunk, 2 * a.rounds)
        for r in range(a.rounds):
            order = ["loop", "apply"] if r % 2 == 0 else ["apply", "loop"]
            for k, which in enumerate(order):
                ids = loop_sets[2 * r + k]
                if which == "loop":
                    row = bare_loop(url, ids)
                    loop_rows.append(row)
                else:
                    row = flowsync_apply(url, db, ids)
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

    n = chunk * a.rounds
    loop_s = sum(r["seconds"] for r in loop_rows)
    apply_s = sum(r["seconds"] for r in apply_rows)
    batches = sum(r["batches"] for r in apply_rows)
    loop_rate, apply_rate = n / loop_s, n / apply_s
    server_s = sum(r["server_s"] for r in apply_rows)
    client_s = sum(r["client_s"] for r in apply_rows)
    plan_s = sum(r["plan_s"] for r in apply_rows)
    cpu_s = sum(r["cpu_s"] for r in apply_rows)
    publish_s = statistics.median(r["publish_s"] for r in apply_rows)
    calls = [c for r in loop_rows for c in r["per_call"]]
    rounds_md = "\n".join(
        f"| {i + 1} | {chunk / lr['seconds']:,.0f} | {chunk / ar['seconds']:,.0f} | "
        f"{(chunk / ar['seconds']) / (chunk / lr['seconds']):.2f}x |"
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
- Each contender deleted {n:,} runs (the same state mix, different runs) in {a.rounds} interleaved
  chunks of {chunk}.

| round | bare loop runs/s | apply runs/s | apply / loop |
|---:|---:|---:|---:|
{rounds_md}

| contender | runs | seconds | runs/s | per batch of 50 |
|---|---:|---:|---:|---|
| bare `bulk_delete` loop | {n:,} | {loop_s:.1f} | {loop_rate:,.0f} | {loop_s / len(calls) * 1000:.0f} ms a call (median {statistics.median(calls) * 1000:.0f} ms) |
| `flowsync apply` | {n:,} | {apply_s:.1f} | {apply_rate:,.0f} | {apply_s / batches * 1000:.0f} ms: server {server_s / batches * 1000:.0f} ms ({sum(r["requests"] for r in apply_rows) / batches:.1f} requests), client {client_s / batches * 1000:.0f} ms, CPU {cpu_s / batches * 1000:.0f} ms |

**apply / bare loop: {apply_rate / loop_rate:.2f}x.** apply's time includes planning
({plan_s:.2f} s over {a.rounds} plans) and not the snapshot it publishes afterwards
({publish_s:.3f} s median). "client" is apply's wall time outside HTTP requests; "CPU" its
process CPU (all threads, planning included).
"""
    publish(text, a.out)


if __name__ == "__main__":
    main()
