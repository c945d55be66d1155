"""Diagnostic: a library-level full pull's peak RSS and DuckDB's own memory at the end.

Not timed and not part of ``bench_pull``; used for the RSS findings in
BENCHMARKS.md. The optional third argument is one SQL statement run on every
DuckDB connection first (e.g. ``SET memory_limit = '128MB'``).

    .venv/bin/python bench/contenders/rss_diag.py http://127.0.0.1:4200/api /tmp/x.duckdb ["SET ..."]
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

from flowsync.api import PrefectClient
from flowsync.config import resolve_api
from flowsync.store import Store
from flowsync.sync import pull

SETTING = sys.argv[3] if len(sys.argv) > 3 else ""
_connect = duckdb.connect


def _connect_with_setting(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
    con = _connect(*args, **kwargs)
    if SETTING:
        con.execute(SETTING)
    return con


def main() -> None:
    duckdb.connect = _connect_with_setting  # type: ignore[assignment]
    url, db = sys.argv[1], Path(sys.argv[2])
    began = time.monotonic()
    with Store.writer(db) as store, PrefectClient(resolve_api(url, None)) as client:
        result = pull(client, store)
        memory = store.execute(
            "SELECT tag, memory_usage_bytes // 1048576 FROM duckdb_memory() WHERE memory_usage_bytes > 0"
        ).rows()
    print(
        json.dumps(
            {
                "setting": SETTING,
                "seconds": round(time.monotonic() - began, 1),
                "rows": result.inserted,
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "duckdb_memory_mb": memory,
            }
        )
    )


if __name__ == "__main__":
    main()
