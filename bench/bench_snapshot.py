"""Benchmark: what publishing the readers' snapshot costs, and reports on it vs the live file.

Part 1, a real server (``--runs``, default 100,000, seeded by ``harness.fast_seed``):
a full pull, then ``--repeat`` no-change pulls and ``--repeat`` pulls after 1% of
the runs changed state, each followed by ``snapshot.publish`` as ``flowsync pull``
does; pull and publish are timed apart, in-process. Then every report on the
live file and on the snapshot, interleaved, medians.

Part 2, synthetic files (``--synthetic``, default 100,000 and 1,000,000 runs, the
generator of ``bench.bench_reports``): the publish mechanisms side by side, a
file copy after CHECKPOINT (flowsync's), DuckDB's ``ATTACH`` + ``COPY FROM
DATABASE`` into a new file, and the Parquet export (full, and ``--since`` after
1% of the runs changed).

    python -m bench.bench_snapshot --runs 100000 --synthetic 100000,1000000 --write bench/results/snapshot.md
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

import flowsync
from bench.bench_reports import generate
from flowsync import export, reports
from flowsync.config import ApiSettings
from flowsync.store import Store
from flowsync.store import snapshot as snap
from flowsync.sync import PullOptions
from harness.fast_seed import fast_seed
from harness.seed import set_states
from harness.server import prefect_server


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


MEMORY_LIMIT_MB: int | None = None


def pull_and_publish(url: str, db: Path) -> dict[str, Any]:
    """One ``flowsync pull``, through the library call the command makes (pull, then publish)."""
    pulled = flowsync.pull(
        db, api=ApiSettings(url=url), options=PullOptions(memory_limit_mb=MEMORY_LIMIT_MB)
    )
    result, published = pulled.result, pulled.snapshot
    return {
        "pull_s": result.seconds,
        "publish_s": published.seconds,
        "published": published.published,
        "rows_changed": result.inserted + result.updated + result.marked_deleted,
        "bytes": db.stat().st_size,
    }


def all_ids(url: str) -> list[str]:
    """Every run id (offset paging: the benchmark's server does not change meanwhile)."""
    ids: list[str] = []
    with httpx.Client(base_url=url + "/", timeout=120) as c:
        while True:
            body = {"limit": 200, "sort": "ID_DESC", "offset": len(ids)}
            page = c.post("flow_runs/filter", json=body).json()
            ids += [r["id"] for r in page]
            if len(page) < 200:
                return ids


def report_timings(db: Path, repeat: int) -> list[tuple[str, float, float]]:
    now = datetime.now(timezone.utc)
    window = reports.Window(now - timedelta(days=30), now)
    jobs: dict[str, Callable[[Store], Any]] = {
        "failures": lambda s: reports.failures(s, "deployment", window),
        "durations": lambda s: reports.durations(s, "deployment", window),
        "late": lambda s: reports.late(s, "deployment", window),
        "flaky": lambda s: reports.flaky(s, window),
    }
    out = []
    with Store.reader(db, live=True) as live, Store.reader(db) as shot:
        assert shot.path != db
        for name, job in jobs.items():
            job(live), job(shot)  # warm-up
            a, b = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                job(live)
                a.append(time.perf_counter() - t)
                t = time.perf_counter()
                job(shot)
                b.append(time.perf_counter() - t)
            out.append((name, med(a), med(b)))
    return out


def part_real(runs: int, repeat: int, scratch: Path) -> dict[str, Any]:
    seeded = fast_seed(runs, log=log)
    home = scratch / "prefect-home"
    shutil.copytree(seeded.home, home)  # the server writes to its home: keep the seeded one clean
    db = scratch / "real.duckdb"
    out: dict[str, Any] = {"runs": runs, "no_change": [], "one_percent": []}
    with prefect_server(home=home) as server:
        log("full pull")
        out["full"] = pull_and_publish(server.url, db)
        log(f"full: {out['full']}")
        for _ in range(repeat):
            out["no_change"].append(pull_and_publish(server.url, db))
            log(f"no-change: {out['no_change'][-1]}")
        ids = all_ids(server.url)
        rng = random.Random(5)
        for rep in range(repeat):
            chosen = rng.sample(ids, max(1, len(ids) // 100))
            with httpx.Client(base_url=server.url + "/", timeout=120) as c:
                set_states(c, chosen, ["CANCELLED", "COMPLETED", "FAILED"][rep % 3], "Changed")
            time.sleep(10)  # the event persister's flush
            out["one_percent"].append(pull_and_publish(server.url, db))
            log(f"1% changed: {out['one_percent'][-1]}")
    out["reports"] = report_timings(db, repeat=max(repeat, 5))
    return out


def part_synthetic(runs: int, repeat: int, scratch: Path, parquet: bool = True) -> dict[str, Any]:
    db = scratch / f"synthetic-{runs}.duckdb"
    log(f"generating {runs} synthetic runs")
    generate(db, runs)
    res: dict[str, Any] = {"runs": runs, "bytes": db.stat().st_size}
    with Store.writer(db) as store:
        res["copy_s"] = med([snap.publish(store).seconds for _ in range(repeat)])
        res["skip_s"] = med([snap.publish(store, changed=False).seconds for _ in range(repeat)])
        copies = []
        for i in range(repeat):
            target = scratch / f"copy-{i}.duckdb"
            t = time.perf_counter()
            store.execute(f"ATTACH '{target}' AS copy_target")
            store.execute(f'COPY FROM DATABASE "{db.stem}" TO copy_target')
            store.execute("DETACH copy_target")
            copies.append(time.perf_counter() - t)
            target.unlink()
        res["copy_from_database_s"] = med(copies)
        out_dir = scratch / f"parquet-{runs}"
        res["parquet_full_s"] = res["parquet_since_1pct_s"] = float("nan")
        if parquet:
            t = time.perf_counter()
            export.export(store, out_dir)
            res["parquet_full_s"] = time.perf_counter() - t
        mark = datetime.now(timezone.utc)
        store.execute(
            "UPDATE flow_runs SET state_type = 'CANCELLED', synced_at = ? WHERE hash(id) % 100 = 0",
            [mark],
        )
        if parquet:
            t = time.perf_counter()
            export.export(store, out_dir, export.ExportRequest(since=mark))
            res["parquet_since_1pct_s"] = time.perf_counter() - t
        res["copy_after_1pct_s"] = snap.publish(store).seconds
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(snap.snapshot_dir(db), ignore_errors=True)
    db.unlink()
    return res


def render(real: dict[str, Any] | None, synthetic: list[dict[str, Any]]) -> str:
    lines = []
    if real:
        nc, op = real["no_change"], real["one_percent"]
        nc_pull, nc_pub = med([r["pull_s"] for r in nc]), med([r["publish_s"] for r in nc])
        op_pull, op_pub = med([r["pull_s"] for r in op]), med([r["publish_s"] for r in op])
        lines += [
            f"## Real server, {real['runs']:,} runs (file {real['full']['bytes'] / 2**20:.0f} MiB)",
            "",
            "| pull | pull s (median) | publish s (median) | publish / pull | published |",
            "|---|---|---|---|---|",
            f"| full | {real['full']['pull_s']:.2f} | {real['full']['publish_s']:.3f} | "
            f"{real['full']['publish_s'] / real['full']['pull_s']:.1%} | yes |",
            f"| no change (x{len(nc)}) | {nc_pull:.3f} | {nc_pub:.4f} | {nc_pub / nc_pull:.1%} | "
            f"{'no (skipped)' if not any(r['published'] for r in nc) else 'yes'} |",
            f"| 1% changed (x{len(op)}, {med([r['rows_changed'] for r in op]):.0f} rows) | {op_pull:.3f} | "
            f"{op_pub:.3f} | {op_pub / op_pull:.1%} | yes |",
            "",
            "| report (30 days) | live file s | snapshot s | snapshot / live |",
            "|---|---|---|---|",
        ]
        lines += [f"| {n} | {a:.4f} | {b:.4f} | {b / a:.2f}x |" for n, a, b in real["reports"]]
        lines.append("")
    if synthetic:
        lines += [
            "## Publish mechanisms on synthetic files",
            "",
            "| runs | file MiB | file copy (flowsync) s | skip, nothing changed s | ATTACH + COPY FROM DATABASE s "
            "| Parquet export, full s | Parquet export --since, 1% changed s | file copy after 1% changed s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['runs']:,} | {s['bytes'] / 2**20:.0f} | {s['copy_s']:.3f} | {s['skip_s']:.4f} | "
            f"{s['copy_from_database_s']:.3f} | {s['parquet_full_s']:.3f} | {s['parquet_since_1pct_s']:.3f} | "
            f"{s['copy_after_1pct_s']:.3f} |"
            for s in synthetic
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=100000, help="real-server runs (0: skip part 1)")
    p.add_argument(
        "--synthetic", default="100000,1000000", help="synthetic sizes ('' to skip part 2)"
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--parquet-max", type=int, default=100000, help="time the Parquet export up to this size"
    )
    p.add_argument(
        "--memory-limit",
        type=int,
        default=None,
        help="pull --memory-limit MB (default: flowsync's cap)",
    )
    p.add_argument("--write", type=Path, default=None)
    a = p.parse_args()
    global MEMORY_LIMIT_MB
    MEMORY_LIMIT_MB = a.memory_limit
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        scratch = Path(tmp)
        real = part_real(a.runs, a.repeat, scratch) if a.runs else None
        log(f"real: {json.dumps(real, default=str)}")
        synthetic = []
        for n in (int(x) for x in a.synthetic.split(",") if x.strip()):
            synthetic.append(part_synthetic(n, a.repeat, scratch, parquet=n <= a.parquet_max))
            log(f"synthetic: {json.dumps(synthetic[-1])}")
    text = render(real, synthetic)
    print(text)
    if a.write:
        a.write.write_text(
            f"# Snapshot publish benchmark ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n{text}"
        )
        a.write.with_suffix(".json").write_text(
            json.dumps({"real": real, "synthetic": synthetic}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
