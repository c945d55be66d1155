"""apply's DuckDB statements per batch of 50, against the number of runs in the file.

Each size is a ``harness/history.py`` file (``--runs`` runs, 80% COMPLETED) with ids
scattered as a server's uuid4s are (``scattered=True``; ordered ids would let zone maps
narrow every lookup by id), built once under ``bench/.work/apply-batch/``. Each measurement
is a fresh child process on a fresh copy of that file: it plans a policy whose rule selects
every COMPLETED run (``flowsync.operations.plan``, timed apart), then, on apply's writer
(``Store.sandboxed_writer``), runs for each of ``--batches`` batches of 50 COMPLETED runs
(``--order``: spread at random over the file, the default, or in the plan's order) what
``policy/apply.py`` runs per batch, with no server:

- ``differing``: the re-read's comparison (``synced_tables.runs_differing``), every run
  unchanged on the server;
- ``reread_write``: 5 of the 50 changed on the server: their watched columns kept
  (``answers.file_rows``, the re-read's ``before_write``), then upserted (``upsert_pages``)
  and committed;
- ``decide``: ``plan.decide_scope`` for the 50 (given the re-read's answer where the
  version takes it);
- ``pending``: the audit's pending rows and their commit (``Ledger.pending``);
- ``outcome``: the outcomes, the runs marked deleted, and their commit (``Ledger.final``).

It prints one JSON line per child: the median and max ms of each step, the sum of the
medians (``batch_ms``), and the process's peak RSS (``ru_maxrss``, the plan included).
``--src`` may be given several times (a ``src`` directory each): the versions run
interleaved, one child at a time, ``--repeat`` rounds.

    python -m bench.bench_apply_batch --runs 10000 100000 1000000 --src /work/main/src --src src
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.bench_plan import POLICY  # the same policy: every COMPLETED run

WORK = Path(__file__).resolve().parent / ".work" / "apply-batch"
BATCH = 50
CHANGED = 5  # runs of a batch the server changed since the pull (re-read and upserted)
STEPS = ("differing", "reread_write", "decide", "pending", "outcome")


# The order the batches' runs are taken in: spread at random over the file, or the plan's
# (oldest first, as apply sends them: a pull writes runs in about that order).
ORDERS = {"random": "hash(id)", "plan": "coalesce(expected_start_time, start_time, created), id"}


def child(source: Path, policy: Path, batches: int, order: str = "random") -> dict[str, object]:
    """One measurement, in this process (run with the flowsync under test on sys.path)."""
    from flowsync import operations
    from flowsync.api.client import Page
    from flowsync.policy.answers import file_rows
    from flowsync.policy.apply import new_result
    from flowsync.policy.ledger import Ledger
    from flowsync.policy.plan import Scope, decide_scope
    from flowsync.policy.result import Outcome, RunResult
    from flowsync.store import Store, synced_tables
    from flowsync.store.tables import FLOW_RUNS
    from harness.history import changed_run

    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        db = Path(tmp) / "apply.duckdb"
        shutil.copyfile(source, db)
        began = time.monotonic()
        plan = operations.plan(db, policy, live=True)
        planned = time.monotonic() - began
        rule = plan.policy.policy.rules[0]
        times: dict[str, list[float]] = {s: [] for s in STEPS}
        with Store.sandboxed_writer(db) as store:
            sample = store.execute(
                "SELECT CAST(id AS VARCHAR), updated, name FROM flow_runs "
                f"WHERE state_type = 'COMPLETED' ORDER BY {ORDERS[order]} LIMIT ?",
                [batches * BATCH],
            ).rows()
            ledger = Ledger(
                store,
                new_result(plan),
                api_url="http://127.0.0.1/api",
                policy_path=plan.policy.source,
                policy_sha256=plan.policy.sha256,
            )

            takes_held = "held" in inspect.signature(Ledger.pending).parameters
            decides_on_held = "held" in inspect.signature(decide_scope).parameters
            # the re-read's comparison takes the server's rows where this version compares
            # more than the stamp, the stamps alone before
            compares_rows = "rows" in inspect.signature(synced_tables.runs_differing).parameters

            def decide_held(answer: list[dict[str, object]]) -> tuple[object, ...]:
                return (answer,) if decides_on_held else ()

            def call(number: int) -> tuple[object, ...]:
                """What this version's ledger takes first: one call value, or its four parts."""
                if hasattr(Ledger, "call"):
                    return (ledger.call(number, rule),)
                return (number, rule.name, rule.action, None)

            @contextmanager
            def timed(step: str) -> Iterator[None]:
                start = time.perf_counter()
                yield
                times[step].append((time.perf_counter() - start) * 1000)

            for number in range(1, batches + 1):
                rows = sample[(number - 1) * BATCH : number * BATCH]
                ids = [r[0] for r in rows]
                stamps = {r[0]: r[1].isoformat() for r in rows}
                compared = (
                    {i: {"updated": u} for i, u in stamps.items()} if compares_rows else stamps
                )
                # The server's answer to the re-read (API objects), the first CHANGED changed; the
                # others' objects are the same shape (what the audit's staging costs depends on).
                answer = [changed_run(int(r[2].rsplit("-", 1)[1]), scattered=True) for r in rows]
                assert [c["id"] for c in answer] == ids
                guards = dict.fromkeys(ids, "COMPLETED")
                # apply hands the ledger the re-read's answer where this version takes it
                held = {"held": {c["id"]: c for c in answer}} if takes_held else {}
                with timed("differing"):
                    synced_tables.runs_differing(store, compared)
                with timed("reread_write"):
                    file_rows(store, ids[:CHANGED])
                    with store.transaction():
                        synced_tables.upsert_pages(
                            store, FLOW_RUNS, [Page.from_rows(answer[:CHANGED])], pull_id=1_000_000
                        )
                with timed("decide"):
                    # this version's decision reads the batch's rows from the re-read's answer
                    decide_scope(store, plan, rule, Scope(tuple(ids)), *decide_held(answer))
                with timed("pending"):
                    ledger.pending(*call(number), guards, **held)  # type: ignore[arg-type]
                results = {i: RunResult(Outcome.DELETED, {"status": "deleted"}) for i in ids}
                with timed("outcome"):
                    ledger.final(  # type: ignore[call-arg]
                        *call(number),  # type: ignore[arg-type]
                        results,
                        guards,
                        also=functools.partial(synced_tables.mark_deleted, store, "flow_runs", ids),
                    )
            marked = store.execute(
                "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL"
            ).scalar()
            assert marked == batches * BATCH, marked
        plan.close()
    out: dict[str, object] = {"plan_s": round(planned, 2)}
    for step in STEPS:
        out[f"{step}_ms"] = round(statistics.median(times[step]), 1)
        out[f"{step}_max"] = round(max(times[step]), 1)
    out["batch_ms"] = round(sum(statistics.median(times[s]) for s in STEPS), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def history(runs: int) -> Path:
    from harness.history import make_history

    WORK.mkdir(parents=True, exist_ok=True)
    db = WORK / f"history-{runs}.duckdb"
    if not db.exists():
        make_history(db, runs, scattered=True)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--src", action="append", default=[], help="a flowsync src directory")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument(
        "--order",
        choices=sorted(ORDERS),
        default="random",
        help="the batches' runs: at random over the file, or in the plan's order (oldest first)",
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("DB", "POLICY", "N", "ORDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        db, pol, n, order = args.child
        result = child(Path(db), Path(pol), int(n), order)
        print(json.dumps(result))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    policy = WORK / "policy.yaml"
    policy.write_text(POLICY)
    root = Path(__file__).resolve().parents[1]
    sources = [str(Path(s).resolve()) for s in args.src] or [str(root / "src")]
    for runs in args.runs:
        db = history(runs)
        for _ in range(args.repeat):
            for src in sources:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(root)])}
                load = os.getloadavg()[0]
                out = subprocess.run(
                    [
                        *(sys.executable, "-m", "bench.bench_apply_batch", "--child"),
                        *(str(db), str(policy), str(args.batches), args.order),
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=root,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    json.dumps(
                        {
                            "runs": runs,
                            "order": args.order,
                            "src": src,
                            "load": round(load, 1),
                            **row,
                        }
                    )
                )


if __name__ == "__main__":
    main()
