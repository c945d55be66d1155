"""The idiomatic dlt pipeline: ``rest_api`` source -> DuckDB, merge on ``id``.

Runs in its own virtualenv (bench/.work/venv-dlt, ``pip install "dlt[duckdb]"``).
POST /flow_runs/filter with an offset paginator whose offset and limit live in
the JSON body, stopping at the first empty page; write disposition merge on the
primary key ``id``. Prints a JSON summary line with the rows in the DuckDB file.

    bench/.work/venv-dlt/bin/python bench/contenders/dlt_pull.py --url ... --db out.duckdb --work /tmp/dlt
"""

from __future__ import annotations

import argparse
import json
import time

import dlt
import duckdb
from dlt.sources.rest_api import rest_api_source


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--work", required=True, help="dlt pipelines dir (state, load packages)")
    a = p.parse_args()
    began = time.monotonic()
    source = rest_api_source(
        {
            "client": {"base_url": a.url.rstrip("/") + "/"},
            "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
            "resources": [
                {
                    "name": "flow_runs",
                    "endpoint": {
                        "path": "flow_runs/filter",
                        "method": "POST",
                        "json": {"sort": "ID_DESC"},
                        "data_selector": "$",
                        "paginator": {
                            "type": "offset",
                            "limit": 200,
                            "offset_body_path": "offset",
                            "limit_body_path": "limit",
                            "total_path": None,
                        },
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="prefect_flow_runs",
        destination=dlt.destinations.duckdb(a.db),
        dataset_name="prefect",
        pipelines_dir=a.work,
        progress=None,
    )
    info = pipeline.run(source)
    info.raise_on_failed_jobs()
    seconds = time.monotonic() - began
    with duckdb.connect(a.db, read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM prefect.flow_runs").fetchone()[0]
        distinct = con.execute("SELECT count(DISTINCT id) FROM prefect.flow_runs").fetchone()[0]
    print(
        json.dumps(
            {"rows": rows, "rows_in_db": distinct, "requests": None, "seconds": round(seconds, 3)}
        )
    )


if __name__ == "__main__":
    main()
