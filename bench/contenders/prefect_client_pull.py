"""The hand-written loop over Prefect's own client: read_flow_runs pages -> DuckDB.

Runs in its own virtualenv (bench/.work/venv-prefect: prefect==3.8.8,
fastapi==0.154.0, duckdb), with PREFECT_API_URL pointing at the server. What a
user would write: ``async with get_client()``, ``read_flow_runs(limit=200,
offset=...)`` until a short page, each page upserted with one ``executemany``
into a table keyed on id. Prints a JSON summary line.

    PREFECT_API_URL=... bench/.work/venv-prefect/bin/python bench/contenders/prefect_client_pull.py --db out.duckdb
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import duckdb
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort

DDL = """
CREATE TABLE IF NOT EXISTS flow_runs (
    id UUID PRIMARY KEY, name VARCHAR, flow_id UUID, deployment_id UUID,
    state_type VARCHAR, state_name VARCHAR, expected_start_time TIMESTAMPTZ,
    start_time TIMESTAMPTZ, end_time TIMESTAMPTZ, total_run_time DOUBLE,
    run_count INTEGER, tags VARCHAR[], parameters JSON, created TIMESTAMPTZ, updated TIMESTAMPTZ
)
"""
UPSERT = "INSERT OR REPLACE INTO flow_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


async def pull(db: str, page_size: int, timings: dict[str, float]) -> int:
    con = duckdb.connect(db)
    con.execute(DDL)
    offset = 0
    async with get_client() as client:
        while True:
            t = time.monotonic()
            runs = await client.read_flow_runs(
                limit=page_size, offset=offset, sort=FlowRunSort.ID_DESC
            )
            timings["fetch_s"] += time.monotonic() - t
            t = time.monotonic()
            rows = [
                (
                    str(r.id),
                    r.name,
                    str(r.flow_id),
                    str(r.deployment_id) if r.deployment_id else None,
                    r.state_type.value if r.state_type else None,
                    r.state_name,
                    r.expected_start_time,
                    r.start_time,
                    r.end_time,
                    r.total_run_time.total_seconds(),
                    r.run_count,
                    list(r.tags),
                    json.dumps(r.parameters, default=str),
                    r.created,
                    r.updated,
                )
                for r in runs
            ]
            if rows:
                con.executemany(UPSERT, rows)
            timings["write_s"] += time.monotonic() - t
            if len(runs) < page_size:
                break
            offset += len(runs)
    n = con.execute("SELECT count(*) FROM flow_runs").fetchone()[0]
    con.close()
    return int(n)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--page-size", type=int, default=200)
    a = p.parse_args()
    began = time.monotonic()
    timings = {"fetch_s": 0.0, "write_s": 0.0}
    n = asyncio.run(pull(a.db, a.page_size, timings))
    seconds = time.monotonic() - began
    print(
        json.dumps(
            {
                "rows": n,
                "rows_in_db": n,
                "requests": None,
                "seconds": round(seconds, 3),
                **{k: round(v, 3) for k, v in timings.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
