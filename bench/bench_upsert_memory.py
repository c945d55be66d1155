"""Benchmark: the DuckDB memory an incremental write needs, against the cap a pull sets.

For each history size (``--runs``, synthetic files of ``harness.history``) and
each batch of changed runs (``--changed``, spread at random over the history, as a
1%-changed pull's ~2,000-row write batches are), the smallest ``memory_limit`` under
which ``upsert_pages`` commits, found by bisection on a fresh copy of the file each
try (spilling allowed, as in a pull). Three shapes: flowsync's (DELETE the rows a
batch replaces, then INSERT, into a flow_runs without an index: migration m003), the
same with the primary key flow_runs had before m003, and the ON CONFLICT DO UPDATE
(with the key) that the DELETE + INSERT replaced. Then the cap ``Store.budget_memory``
sets.

    python -m bench.bench_upsert_memory --runs 10000,100000,1000000 --changed 1000,2000
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from flowsync.api.client import Page
from flowsync.errors import StoreError
from flowsync.store import Store, synced_tables
from flowsync.store.synced_tables import Written, upsert_pages
from flowsync.store.tables import FLOW_RUNS, TableSpec
from harness.history import changed_run, make_history


def _merge_on_conflict(store: Store, spec: TableSpec, pull_id: int) -> Written:
    """The merge before the fix: one INSERT ... ON CONFLICT DO UPDATE of every column."""
    cols = [*spec.column_names, "extra"]
    col_list = ", ".join(f'"{c}"' for c in cols)
    sets = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c != "id")
    store.execute(
        f"""
        INSERT INTO {spec.name} ({col_list}, synced_at, seen_pull, deleted_at)
        SELECT {col_list}, now(), ?, NULL FROM _incoming
        ON CONFLICT (id) DO UPDATE SET {sets},
            synced_at = excluded.synced_at, seen_pull = excluded.seen_pull, deleted_at = NULL
        """,
        [pull_id],
    )
    store.execute("DROP TABLE _incoming")
    return Written(0, 0, 0)


@contextmanager
def _shape(name: str) -> Iterator[None]:
    if name == "on-conflict":
        with mock.patch.object(synced_tables, "_merge_incoming", _merge_on_conflict):
            yield
    else:
        yield


def _fits(source: Path, work: Path, runs: int, changed: int, cap_mb: int, shape: str) -> bool:
    shutil.copy(source, work)
    if shape != "replace":  # the schema before m003
        with Store.writer(work, memory_limit_mb=0) as store:  # the old shape, uncapped
            store.execute("ALTER TABLE flow_runs ADD PRIMARY KEY (id)")
    ids = random.Random(runs + changed).sample(range(runs), changed)
    pages = [
        Page.from_rows([changed_run(i) for i in ids[lo : lo + 200]])
        for lo in range(0, changed, 200)
    ]
    with Store.writer(work) as store, _shape(shape):
        store.budget_memory(fixed_mb=cap_mb)
        try:
            with store.memory_guard(), store.transaction():
                upsert_pages(store, FLOW_RUNS, pages, pull_id=2)
        except StoreError:
            return False
    return True


def need_mb(
    source: Path, work: Path, runs: int, changed: int, shape: str, hi: int = 4096
) -> int | None:
    """Smallest cap (MB, to 4 MB) under which the write commits; None if not even ``hi``."""
    if not _fits(source, work, runs, changed, hi, shape):
        return None
    lo = 8
    while hi - lo > 4:
        mid = (lo + hi) // 2
        if _fits(source, work, runs, changed, mid, shape):
            hi = mid
        else:
            lo = mid
    return hi


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="10000,100000,1000000")
    parser.add_argument("--changed", default="1000,2000")
    args = parser.parse_args()
    print(
        "| runs | changed | cap set by a pull (MB) | need, DELETE + INSERT, no index (MB) "
        "| need, DELETE + INSERT, primary key (MB) | need, ON CONFLICT DO UPDATE (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for runs in (int(x) for x in args.runs.split(",")):
            t = time.perf_counter()
            source = make_history(Path(tmp) / f"history-{runs}.duckdb", runs)
            built = time.perf_counter() - t
            with Store.writer(source) as store:
                cap = store.budget_memory() // 2**20
            for changed in (int(x) for x in args.changed.split(",")):
                work = Path(tmp) / "work.duckdb"
                needs = [
                    need_mb(source, work, runs, changed, shape)
                    for shape in ("replace", "replace-pk", "on-conflict")
                ]
                cells = " | ".join(str(n or "> 4096") for n in needs)
                print(f"| {runs:,} | {changed:,} | {cap} | {cells} |", flush=True)
            print(f"<!-- {runs:,} runs built in {built:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
