"""``flowsync pull`` in-process with every request timed: the slowest of each kind, as JSON.

Runs the library's pull (what the CLI calls) through an httpx transport that
times each request until its body is read, and groups requests by kind (the
path plus the shape of a /filter body: keyset window, tie page, by id, ...).
Prints one JSON line: seconds, mode, requests, and per kind the count, total
and slowest seconds. Benchmarks only.

    python bench/contenders/flowsync_timed.py --url http://127.0.0.1:4200/api --db runs.duckdb
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import httpx

from flowsync.api import PrefectClient
from flowsync.config import ApiSettings
from flowsync.store import Store
from flowsync.store.snapshot import publish
from flowsync.sync import PullOptions, pull


def kind(request: httpx.Request) -> str:
    path = request.url.path.split("/api/", 1)[-1]
    if not path.endswith("filter") or not request.content:
        return f"{request.method} {path}"
    body = json.loads(request.content)
    runs = body.get("flow_runs") or {}
    window = runs.get("expected_start_time") or {}
    if "id" in runs:
        shape = "by id"
    elif window.get("after_") and window.get("after_") == window.get("before_"):
        shape = "tie page"
    elif window and body.get("limit") == 1:
        shape = "range end"
    elif window:
        shape = "keyset window" + (" (open end)" if "before_" not in window else "")
    else:
        shape = f"sort {body.get('sort')} offset"
    return f"{request.method} {path} [{shape}]"


class TimingTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lock = threading.Lock()
        self.kinds: dict[str, dict[str, Any]] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        began = time.monotonic()
        response = self.inner.handle_request(request)
        content = response.read()
        took = time.monotonic() - began
        k = kind(request)
        with self.lock:
            s = self.kinds.setdefault(k, {"n": 0, "total_s": 0.0, "max_s": 0.0})
            s["n"] += 1
            s["total_s"] += took
            s["max_s"] = max(s["max_s"], took)
        # The body is decoded now: hand it on without the encoding headers that described it.
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length")
        }
        return httpx.Response(
            response.status_code, headers=headers, content=content, extensions=response.extensions
        )

    def close(self) -> None:
        self.inner.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--full", action="store_true")
    p.add_argument("--verify", action="store_true")
    p.add_argument(
        "--publish",
        action="store_true",
        help="publish the readers' snapshot after the pull, as `flowsync pull` does (timed apart)",
    )
    a = p.parse_args()
    transport = TimingTransport()
    began = time.monotonic()
    options = PullOptions(concurrency=a.concurrency, full=a.full, verify=a.verify)
    with (
        Store.writer(a.db) as store,
        PrefectClient(ApiSettings(url=a.url), transport=transport) as client,
    ):
        result = pull(client, store, options)
        seconds = time.monotonic() - began
        published: dict[str, object] = {}
        if a.publish:
            t = time.monotonic()
            done = publish(store, pull_id=result.pull_id, changed=result.changed)
            published = {
                "publish_s": round(time.monotonic() - t, 3),
                "published": done.published,
                "snapshot_bytes": done.snapshot.bytes,
            }
    kinds = {
        k: {"n": v["n"], "total_s": round(v["total_s"], 3), "max_s": round(v["max_s"], 3)}
        for k, v in sorted(transport.kinds.items())
    }
    print(
        json.dumps(
            {
                "seconds": round(seconds, 3),
                "mode": result.mode,
                "requests": sum(v["n"] for v in kinds.values()),
                "inserted": result.inserted,
                "kinds": kinds,
                **published,
            }
        )
    )


if __name__ == "__main__":
    main()
