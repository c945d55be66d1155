"""Benchmark: runs with large parameters written under the writer's default memory cap.

Each try writes one API page of runs whose parameters are ``--kb`` KB of JSON each
(``--mb`` MB of them in all) into a fresh file, the way a pull writes a flush of pages
(``PullContext.write_pages``, the writer's 64 MB cap), twice: staged in one statement
and one transaction (``STAGE_BYTES`` raised past the page: flowsync before the parts)
and as flowsync stages them now (parts of ``STAGE_BYTES``, each committed). It prints
a markdown row per size: whether each wrote every run, and its seconds.

    python -m bench.bench_large_params --mb 2,4,8,10,16,32,64 --kb 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

from flowsync.api.client import Page
from flowsync.errors import FlowsyncError
from flowsync.store import Store, synced_tables
from flowsync.store.tables import FLOW_RUNS
from flowsync.sync import NullProgress, PullOptions
from flowsync.sync.context import PullContext
from harness.history import changed_run


def page_of(mb: int, kb: int) -> Page:
    """Runs of ``kb`` KB of parameters each, ``mb`` MB of them in all, as one page."""
    n = max(1, mb * 1024 // kb)
    return Page.from_rows(
        [
            {**changed_run(i), "parameters": {"files": [f"s3://b/{i}/" + "x" * 90] * (kb * 10)}}
            for i in range(n)
        ]
    )


def write(page: Page, stage_bytes: int) -> tuple[str, float]:
    """Write ``page`` as a pull would into a fresh file: ("ok" or the error, seconds)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(synced_tables, "STAGE_BYTES", stage_bytes),
    ):
        began = time.monotonic()
        try:
            with Store.writer(Path(tmp) / "runs.duckdb") as store:
                ctx = PullContext(
                    None,  # type: ignore[arg-type]  # writing asks nothing of the server
                    store,
                    PullOptions(),
                    NullProgress(),
                    1,
                    datetime.now(timezone.utc),
                )
                ctx.write_pages(FLOW_RUNS, [page])
                written = store.execute("SELECT count(*) FROM flow_runs").scalar()
            outcome = "ok" if written == len(page.rows) else f"{written} of {len(page.rows)}"
        except FlowsyncError as e:
            outcome = "out of memory" if "out of memory" in str(e) else str(e)[:80]
        return outcome, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", default="2,4,8,10,16,32,64", help="MB of parameters per try")
    parser.add_argument("--kb", type=int, default=200, help="KB of parameters per run")
    args = parser.parse_args()
    print("| MB of parameters | runs | one statement | in parts (now) |")
    print("|---:|---:|---|---|")
    for mb in (int(x) for x in args.mb.split(",")):
        page = page_of(mb, args.kb)
        one, one_s = write(page, 2**40)
        parts, parts_s = write(page, synced_tables.STAGE_BYTES)
        print(
            f"| {len(page.body) / 2**20:.1f} | {len(page.rows)} | {one} ({one_s:.2f} s) "
            f"| {parts} ({parts_s:.2f} s) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
