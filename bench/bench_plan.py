"""A first clean-up at scale: planning hundreds of thousands of runs, its peak memory and time.

Each size is a ``harness/history.py`` file (``--runs`` runs, 80% COMPLETED) built once
under ``bench/.work/plan/``. Each measurement is a fresh child process that does what
``flowsync apply`` does before its first call: ``flowsync.operations.plan`` (the read-only,
sandboxed plan of a policy whose rule selects every COMPLETED run, ``max_actions``
1,000,000), then reads every batch of ids apply would send (``policy.apply.batches``),
then decides the first batch again on the writer connection (``decide_scope``, as apply
does right before a call). It reports wall seconds per step and the process's peak RSS
(``ru_maxrss``, which includes Python, Polars, DuckDB and the plan).

``--src`` may be given several times (a ``src`` directory each, e.g. main's and a
worktree's): the versions run interleaved, one child at a time, ``--repeat`` rounds.

    python -m bench.bench_plan --runs 100000 1000000 --src /work/main/src --src src
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / ".work" / "plan"
POLICY = """\
version: 1
max_actions: 1000000
rules:
  - name: completed
    action: delete
    sql: SELECT id FROM flow_runs WHERE state_type = 'COMPLETED'
"""


def child(db: Path, policy: Path) -> dict[str, object]:
    """One measurement, in this process (run with the flowsync under test on sys.path)."""
    from flowsync import operations
    from flowsync.policy.apply import batches
    from flowsync.policy.plan import Scope, decide_scope
    from flowsync.store import Store

    began = time.monotonic()
    plan = operations.plan(db, policy, live=True)
    planned = time.monotonic() - began
    total = plan.total
    began = time.monotonic()
    count = ids = 0
    first = None
    for batch in batches(plan):
        count += 1
        ids += len(batch.ids)
        first = first or batch
    batched = time.monotonic() - began
    decided = 0.0
    if first is not None:
        with Store.sandboxed_writer(db) as store:
            began = time.monotonic()
            scope = Scope(tuple(first.ids), tuple(set(first.deployments.values())))
            decision = decide_scope(store, plan, first.rule, scope)
            decided = time.monotonic() - began
            assert all(why is None for why in decision.reasons.values())
    return {
        "planned": total,
        "batches": count,
        "batched_ids": ids,
        "plan_s": round(planned, 2),
        "batches_s": round(batched, 2),
        "decision_ms": round(decided * 1000, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def history(runs: int) -> Path:
    from harness.history import make_history

    WORK.mkdir(parents=True, exist_ok=True)
    db = WORK / f"history-{runs}.duckdb"
    if not db.exists():
        make_history(db, runs)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--src", action="append", default=[], help="a flowsync src directory")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("DB", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    policy = WORK / "policy.yaml"
    policy.write_text(POLICY)
    sources = [str(Path(s).resolve()) for s in args.src] or [
        str(Path(__file__).resolve().parents[1] / "src")
    ]
    for runs in args.runs:
        db = history(runs)
        for _ in range(args.repeat):
            for src in sources:
                env = {**os.environ, "PYTHONPATH": src}
                load = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, "-m", "bench.bench_plan", "--child", str(db), str(policy)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=Path(__file__).resolve().parents[1],
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps({"runs": runs, "src": src, "load": round(load, 1), **row}))


if __name__ == "__main__":
    main()
