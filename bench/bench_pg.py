"""Benchmark ``flowsync pull`` and ``apply`` against PostgreSQL-backed servers, 1 and 2 API workers.

    .venv/bin/python -m bench.bench_pg --large 1000000 --small 100000

Seeds (or reuses) kept clusters with ``harness.pg_seed`` and records, as JSON
lines in bench/results/pg.raw (gitignored), what BENCHMARKS.md reports:

- ``--small`` runs, workers 1 and 2: the raw-HTTP floor (bench/contenders/
  floor.py) at 1..4 pages in flight and a full ``flowsync pull`` at
  ``--concurrency`` 1..4, interleaved, each its own process (wall, peak RSS);
- ``--large`` runs, ``--large-workers``: a full pull at ``--concurrency`` 4,
  the no-change pull after it, ``--verify``, the pull after 1% of runs changed
  state (and the snapshot publish after it, timed apart), direct latency probes of the request shapes involved (offset pages
  deep in the table, the history over the whole range), and ``apply`` of a
  10,000-run delete policy against a per-run ``DELETE`` loop (sampled on 1,000
  runs; its rate is per run).

Every pull runs through bench/contenders/flowsync_timed.py, which logs the
slowest request of each kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from bench.bench_delete import delete_loop, policy_text
from bench.bench_pull import child_env, last_json, run_child
from harness.fast_seed import WORK
from harness.pg_seed import pg_cluster_at, pg_fast_seed, pg_server
from harness.seed import set_states

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = Path(__file__).resolve().parent / "contenders"
RAW = Path(__file__).resolve().parent / "results" / "pg.raw"
PY = sys.executable
FLOWSYNC = str(Path(sys.executable).parent / "flowsync")


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def record(**row: Any) -> dict[str, Any]:
    row["at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    row["load"] = round(os.getloadavg()[0], 1)
    RAW.parent.mkdir(parents=True, exist_ok=True)
    with RAW.open("a") as f:
        f.write(json.dumps(row) + "\n")
    log(json.dumps(row)[:600])
    return row


def timed_pull(url: str, db: Path, *args: str) -> dict[str, Any]:
    cmd = [PY, str(CONTENDERS / "flowsync_timed.py"), "--url", url, "--db", str(db), *args]
    # This checkout's src first: the venv's editable install may point at another checkout.
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    wall, rc, rss, cpu, out, err = run_child(cmd, child_env(PYTHONPATH=path), timeout=7200)
    if rc != 0:
        raise RuntimeError(f"pull failed ({rc}): {err[-3000:]}")
    result = last_json(out)
    return {"wall": round(wall, 2), "rss_mb": round(rss, 1), "cpu": round(cpu, 1), **result}


def floor(url: str, in_flight: int, *, keyset: bool = False) -> dict[str, Any]:
    cmd = [PY, str(CONTENDERS / "floor.py"), "--url", url, "--in-flight", str(in_flight)]
    cmd += ["--keyset"] if keyset else []
    wall, rc, _rss, _cpu, out, err = run_child(cmd, child_env(), timeout=7200)
    if rc != 0:
        raise RuntimeError(f"floor failed ({rc}): {err[-3000:]}")
    return {"wall": round(wall, 2), **last_json(out)}


def floor_then_pull(url: str, db: Path, n: int, *, keyset: bool, **labels: Any) -> None:
    """The floor, then a full pull into a fresh ``db``, both with ``n`` pages in flight."""
    record(phase="floor", in_flight=n, keyset=keyset, **labels, **floor(url, n, keyset=keyset))
    db.unlink(missing_ok=True)
    record(phase="full", concurrency=n, **labels, **timed_pull(url, db, "--concurrency", str(n)))


def probe(c: httpx.Client, path: str, body: dict[str, Any]) -> float | str:
    """Seconds for one request, or how it failed (the server answers 500 when its database
    statement times out: PREFECT_API_DATABASE_TIMEOUT, 10 s by default)."""
    began = time.monotonic()
    try:
        r = c.post(path, json=body)
    except httpx.TransportError as e:
        return f"{type(e).__name__} after {round(time.monotonic() - began, 3)}s"
    took = round(time.monotonic() - began, 3)
    return took if r.status_code == 200 else f"HTTP {r.status_code} after {took}s"


def probes(url: str, runs: int) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    with httpx.Client(base_url=url + "/", timeout=600) as c:
        out["count"] = probe(c, "flow_runs/count", {})
        for frac in (0.0, 0.5, 0.9):
            off = int(runs * frac)
            out[f"filter ID_DESC offset {off}"] = probe(
                c, "flow_runs/filter", {"sort": "ID_DESC", "limit": 200, "offset": off}
            )
        now = datetime.now(timezone.utc)
        start, end = now - timedelta(days=91), now + timedelta(days=8)
        interval = (end - start).total_seconds() / 100
        out["history 100 buckets, whole range"] = probe(
            c,
            "flow_runs/history",
            {
                "history_start": start.isoformat(),
                "history_end": end.isoformat(),
                "history_interval_seconds": interval,
            },
        )
        out["filter state COMPLETED sort START_TIME_ASC (#23127 shape)"] = probe(
            c,
            "flow_runs/filter",
            {
                "sort": "START_TIME_ASC",
                "limit": 200,
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            },
        )
    return out


def run_ids(db: Path, where: str, limit: int) -> list[str]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return [
            r[0]
            for r in con.execute(
                f"SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE deleted_at IS NULL AND {where} ORDER BY hash(id) LIMIT ?",
                [limit],
            ).fetchall()
        ]
    finally:
        con.close()


def large(
    runs: int,
    workers: int,
    scratch: Path,
    skip_apply: bool,
    in_flight: list[int],
    pulls_only: bool = False,
) -> None:
    seeded = pg_fast_seed(runs, log=log)
    with pg_cluster_at(seeded.root) as cluster, pg_server(cluster, workers, copy=True) as server:
        url = server.url
        at = {"runs": runs, "workers": workers}  # every record of this size and server
        record(phase="probes", **at, **probes(url, runs))
        db = scratch / f"large-{runs}-w{workers}.duckdb"
        for n in in_flight:
            # At this size the offset floor measures the server's offset scan (seconds a
            # page deep in the table), so the floor here walks by keyset, like the pull.
            floor_then_pull(url, db, n, **at, keyset=True)
        if pulls_only:
            return
        record(phase="no-change", **at, **timed_pull(url, db))
        record(phase="verify", **at, **timed_pull(url, db, "--verify"))
        changed = run_ids(db, "state_type = 'COMPLETED'", runs // 100)
        t = time.monotonic()
        with httpx.Client(base_url=url + "/", timeout=120) as c:
            set_states(c, changed, "CANCELLED", "Cancelled")
        change_s = time.monotonic() - t
        time.sleep(15)  # the services process stores events every few seconds
        row = timed_pull(url, db, "--publish")  # and the snapshot publish after it, timed apart
        rows = row.pop("inserted", None)
        record(
            phase="1% changed",
            **at,
            changed=len(changed),
            change_s=round(change_s, 1),
            inserted=rows,
            **row,
        )
        if skip_apply:
            return
        victims = run_ids(db, "state_type = 'FAILED'", 10_000)
        policy = scratch / "delete-10k.yaml"
        policy.write_text(policy_text(victims))
        cmd = [FLOWSYNC, "apply", str(policy), "--db", str(db), "--api-url", url, "--yes", "--json"]
        wall, rc, rss, _cpu, _out, err = run_child(cmd, child_env(), timeout=7200)
        if rc != 0:
            raise RuntimeError(f"apply failed ({rc}): {err[-3000:]}")
        loop_ids = run_ids(db, "state_type = 'CRASHED'", 1000)
        loop_s, retries, _slept = delete_loop(url, loop_ids)
        record(
            phase="apply",
            **at,
            apply_runs=len(victims),
            apply_s=round(wall, 1),
            apply_rss_mb=round(rss, 1),
            loop_runs=len(loop_ids),
            loop_s=round(loop_s, 1),
            loop_retries=retries,
            speedup=round((loop_s / len(loop_ids)) / (wall / len(victims)), 2),
        )


def small(
    runs: int,
    scratch: Path,
    workers_list: list[int],
    reps: int,
    in_flight: list[int],
    keyset: bool = False,
) -> None:
    seeded = pg_fast_seed(runs, log=log)
    with pg_cluster_at(seeded.root) as cluster:
        for workers in workers_list:
            with pg_server(cluster, workers=workers) as server:
                for rep in range(reps):
                    for n in in_flight:
                        db = scratch / f"small-{runs}-w{workers}-c{n}.duckdb"
                        floor_then_pull(
                            server.url, db, n, runs=runs, workers=workers, keyset=keyset, rep=rep
                        )


def report() -> str:
    """Markdown tables from the last record of each measurement in bench/results/pg.raw."""
    rows = [json.loads(line) for line in RAW.read_text().splitlines() if line.strip()]
    out = []
    for r in rows:
        if r["phase"] == "probes":
            out.append(f"Probes, {r['runs']:,} runs, {r['workers']} API worker(s) ({r['at']}):\n")
            out.append("| request | seconds |\n|---|---|")
            out += [
                f"| {k} | {v} |"
                for k, v in r.items()
                if k not in ("phase", "runs", "workers", "at")
            ]
            out.append("")
    pulls = [
        r for r in rows if r["phase"] in ("full", "no-change", "verify", "1% changed", "floor")
    ]
    if pulls:
        out.append(
            "| runs | workers | what | in flight | wall s | runs/s | requests | peak RSS MB | at |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in pulls:
            flight = r.get("concurrency") or r.get("in_flight") or ""
            rate = f"{r['runs'] / r['wall']:.0f}" if r["phase"] in ("full", "floor") else ""
            out.append(
                f"| {r['runs']:,} | {r['workers']} | {r['phase']}{' (keyset)' if r.get('keyset') else ''} | {flight} | {r['wall']} | {rate} | "
                f"{r.get('requests', '')} | {r.get('rss_mb', '')} | {r['at'][11:16]} |"
            )
        out.append("")
        out.append("Slowest request of each kind (flowsync pulls):\n")
        out.append("| runs | workers | pull | kind | n | slowest s | mean s |")
        out.append("|---|---|---|---|---|---|---|")
        for r in pulls:
            for k, v in (r.get("kinds") or {}).items():
                out.append(
                    f"| {r['runs']:,} | {r['workers']} | {r['phase']} c={r.get('concurrency', '')} | `{k}` | "
                    f"{v['n']} | {v['max_s']} | {v['total_s'] / v['n']:.3f} |"
                )
        out.append("")
    for r in rows:
        if r["phase"] == "1% changed" and "publish_s" in r:
            out.append(
                f"Publish after the 1%-changed pull at {r['runs']:,} runs: {r['publish_s']} s "
                f"({r.get('snapshot_bytes', 0) / 2**20:,.0f} MiB) against {r['seconds']} s for the pull: "
                f"{r['publish_s'] / r['seconds']:.1%}."
            )
    for r in rows:
        if r["phase"] == "apply":
            out.append(
                f"Apply at {r['runs']:,} runs: {r['apply_runs']:,} deletes in {r['apply_s']} s "
                f"({r['apply_runs'] / r['apply_s']:.0f}/s, peak RSS {r['apply_rss_mb']} MB); per-run DELETE loop "
                f"{r['loop_runs']:,} runs in {r['loop_s']} s ({r['loop_runs'] / r['loop_s']:.1f}/s); "
                f"apply is {r['speedup']}x faster per run."
            )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--large", type=int, default=0)
    p.add_argument("--large-workers", type=int, nargs="+", default=[2])
    p.add_argument(
        "--large-in-flight",
        type=int,
        nargs="+",
        default=[4],
        help="pages in flight for the keyset floor and the full pull at --large",
    )
    p.add_argument("--small", type=int, default=0)
    p.add_argument("--small-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--skip-apply", action="store_true")
    p.add_argument(
        "--pulls-only",
        action="store_true",
        help="at --large, stop after the floor and full pulls (no no-change, verify, 1%% or apply)",
    )
    p.add_argument(
        "--keyset-floor",
        action="store_true",
        help="at --small, the keyset floor instead of offsets",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="print markdown tables from bench/results/pg.raw and exit",
    )
    a = p.parse_args()
    if a.report:
        print(report())
        return
    scratch = WORK / "scratch-pg"
    scratch.mkdir(parents=True, exist_ok=True)
    record(
        phase="machine",
        python=platform.python_version(),
        cpus=os.cpu_count(),
        loads=list(os.getloadavg()),
        argv=sys.argv[1:],
    )
    for w in a.large_workers if a.large else []:
        large(a.large, w, scratch, a.skip_apply, a.large_in_flight, a.pulls_only)
    if a.small:
        small(a.small, scratch, a.small_workers, a.reps, a.in_flight, a.keyset_floor)


if __name__ == "__main__":
    main()
