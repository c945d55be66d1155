"""The no-change pull, flat from 10k to 1M runs: wall, in-process time, requests, interleaved.

    .venv/bin/python -m bench.bench_nochange --sizes 10000 1000000 --rounds 5

One PostgreSQL-backed server (1 API worker, a fresh copy of each kept seed from
``harness.pg_seed``) per size, all up at once. Each size's file is the one pulled
from its seed before (``bench_apply_bulk.pulled_file``), copied; one deployment is
given an active schedule, as production servers have (each pull then asks for the
server's SCHEDULED count too). One catch-up pull each, then ``--rounds`` rounds: in each, one ``flowsync pull --json --quiet`` per
size, as cron would run it (a new process of this checkout's CLI), the sizes in
alternating order, then the same with the rolling re-read's steady-state share of
one 15-minute pull due (``bench_staleness.share``: ``live x 15 min / 0.85 W``, W =
24 h; those runs' ``synced_at`` moved back a day first). Per pull: wall (process
start to exit), the pull's own seconds (from its JSON), requests, CPU, peak RSS. ``--phases`` adds, per size, one pull in
process under cProfile and prints where its time went.

Prints a markdown table (medians, and the ratio of each size to the smallest) and
appends it to ``--out`` when given. Benchmarks only.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.bench_apply_bulk import pulled_file
from bench.bench_pull import child_env, last_json, run_child
from bench.bench_staleness import make_due as make_due_in
from bench.bench_staleness import share
from harness.fast_seed import WORK
from harness.pg_seed import pg_cluster_at, pg_fast_seed, pg_server

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def cli_pull(url: str, db: Path) -> dict[str, Any]:
    """One ``flowsync pull`` process of this checkout: wall, CPU, RSS and its JSON summary."""
    cmd = [PY, "-m", "flowsync", "pull", "--db", str(db), "--api-url", url, "--json", "--quiet"]
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    wall, rc, rss, cpu, out, err = run_child(cmd, env, timeout=3600)
    if rc != 0:
        raise RuntimeError(f"pull failed ({rc}): {err[-2000:]}")
    summary = last_json(out)
    return {
        "wall": wall,
        "seconds": float(summary["seconds"]),
        "requests": int(summary["requests"]),
        "mode": summary["mode"],
        "cpu": cpu,
        "rss_mb": rss,
    }


def schedule_one_deployment(url: str) -> None:
    """Give one deployment an active hourly schedule, as production servers have: every
    incremental pull then asks for the server's SCHEDULED count too (``_scheduled_agree``).
    The benchmark's servers run no scheduler, so no run is inserted; the catch-up pull reads
    the changed deployment."""
    import httpx

    with httpx.Client(base_url=url + "/", timeout=120) as c:
        deployment = c.post("deployments/filter", json={"limit": 1}).json()[0]["id"]
        answer = c.post(
            f"deployments/{deployment}/schedules",
            json=[{"schedule": {"interval": 3600}, "active": True}],
        )
        answer.raise_for_status()


def make_due(db: Path, due: int) -> None:
    """Make ``due`` live runs in the file a day old (``bench_staleness.make_due``)."""
    from flowsync.store import Store

    with Store.writer(db, memory_limit_mb=0) as store:  # a bulk UPDATE: no write-job cap
        make_due_in(store, due)


def phases(url: str, db: Path) -> str:
    """One pull in this process under cProfile: the 25 costliest calls by cumulative time."""
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.store import Store
    from flowsync.sync import pull

    profile = cProfile.Profile()
    with Store.writer(db) as store, PrefectClient(ApiSettings(url=url)) as client:
        profile.enable()
        pull(client, store)
        profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--phases", action="store_true", help="also profile one pull per size")
    p.add_argument("--out", type=Path, default=None, help="append the markdown section here")
    a = p.parse_args()
    scratch = WORK / "scratch-nochange"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    began = datetime.now(timezone.utc)
    loads = [os.getloadavg()[0]]
    kinds = ("nothing due", "15-min share due")
    rows: dict[tuple[int, str], list[dict[str, Any]]] = {(n, k): [] for n in a.sizes for k in kinds}
    with ExitStack() as stack:
        urls, dbs = {}, {}
        for n in a.sizes:
            seeded = pg_fast_seed(n, log=log)
            cluster = stack.enter_context(pg_cluster_at(seeded.root))
            server = stack.enter_context(pg_server(cluster, 1, copy=True))
            urls[n], dbs[n] = server.url, scratch / f"nochange-{n}.duckdb"
            pulled_file(server.url, dbs[n], seeded.root, log)
            schedule_one_deployment(server.url)
        for n in a.sizes:
            r = cli_pull(urls[n], dbs[n])
            log(f"{n}: catch-up pull {r['mode']}, {r['wall']:.2f}s, {r['requests']} requests")
        for i in range(a.rounds):
            order = a.sizes if i % 2 == 0 else list(reversed(a.sizes))
            for kind in kinds:
                for n in order:
                    if kind != "nothing due":
                        make_due(dbs[n], share(n))
                    r = cli_pull(urls[n], dbs[n])
                    loads.append(os.getloadavg()[0])
                    rows[n, kind].append(r)
                    log(
                        f"round {i + 1}, {n}, {kind}: wall {r['wall']:.3f}s, "
                        f"in-process {r['seconds']:.3f}s, {r['requests']} requests, {r['mode']}"
                    )
        if a.phases:
            for n in a.sizes:
                make_due(dbs[n], share(n))
                print(
                    f"\n### cProfile of one pull with the 15-min share due, {n:,} runs\n\n"
                    f"```\n{phases(urls[n], dbs[n])}```"
                )
                print(
                    f"\n### cProfile of one no-change pull, {n:,} runs\n\n```\n{phases(urls[n], dbs[n])}```"
                )
    ended = datetime.now(timezone.utc)

    def med(n: int, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[n, kind])

    base = a.sizes[0]
    lines = [
        f"### No-change pull, {' -> '.join(f'{n:,}' for n in a.sizes)} runs "
        f"({began:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC)",
        "",
        f"`python -m bench.bench_nochange --sizes {' '.join(map(str, a.sizes))} --rounds {a.rounds}`; "
        f"PostgreSQL 15, 1 API worker, load {min(loads):.1f}-{max(loads):.1f}; "
        f"medians of {a.rounds} interleaved rounds, each pull a new `flowsync pull` process.",
        "",
        "| runs | re-read | wall (rounds) | wall / smallest | in-process | in-process / smallest "
        "| requests | CPU | peak RSS |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        for n in a.sizes:
            walls = ", ".join(f"{r['wall']:.2f}" for r in rows[n, kind])
            due = "none due" if kind == "nothing due" else f"{share(n):,} runs due"
            lines.append(
                f"| {n:,} | {due} | {med(n, kind, 'wall'):.2f} s ({walls}) "
                f"| {med(n, kind, 'wall') / med(base, kind, 'wall'):.2f}x "
                f"| {med(n, kind, 'seconds'):.2f} s "
                f"| {med(n, kind, 'seconds') / med(base, kind, 'seconds'):.2f}x "
                f"| {max(r['requests'] for r in rows[n, kind])} | {med(n, kind, 'cpu'):.2f} s "
                f"| {med(n, kind, 'rss_mb'):.0f} MB |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with a.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
