"""Benchmark: the 429s a pull and an apply cause behind a Cloud-like rate limit, with and without a budget.

Prefect Cloud limits requests per account (625/min on Hobby, shared with the
production workers). A loopback proxy in front of a real server plays that
limit: at most ``--limit`` requests in any rolling second, answering 429 with
``Retry-After: 1`` beyond it (and counting every answer). Through it, each
variant runs as a subprocess on a new file:

- ``pull``: ``flowsync pull`` (full, default concurrency) of ``--runs`` runs;
- ``pull --max-requests-per-minute B``: the same under a budget below the limit;
- ``apply`` / ``apply --max-requests-per-minute B``: a policy that deletes
  ``--delete`` of those runs (re-read + ``bulk_delete`` per 50), on a fresh
  server copy each.

    python -m bench.bench_quota --runs 1500 --limit 5 --budget 240 --repeat 3 --apply-repeat 3 \
        --out bench/results/quota.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.contenders.count_proxy import forward, reply, request_parts
from harness.seed import seed
from harness.server import prefect_server


class Limiter:
    """At most ``limit`` requests in any rolling ``window`` seconds; counts what it answered."""

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit, self.window = limit, window
        self.sent: deque[float] = deque()
        self.lock = threading.Lock()
        self.passed = 0
        self.throttled = 0

    def admit(self) -> bool:
        with self.lock:
            now = time.monotonic()
            while self.sent and now - self.sent[0] >= self.window:
                self.sent.popleft()
            if len(self.sent) >= self.limit:
                self.throttled += 1
                return False
            self.sent.append(now)
            self.passed += 1
            return True

    def take(self) -> tuple[int, int]:
        with self.lock:
            out = (self.passed, self.throttled)
            self.passed = self.throttled = 0
            return out


def proxy(upstream: str, limiter: Limiter) -> ThreadingHTTPServer:
    up = urlsplit(upstream)
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            data, headers = request_parts(self)
            if not limiter.admit():
                body = json.dumps({"detail": "Rate limit exceeded"}).encode()
                reply(self, 429, [("Retry-After", "1"), ("Content-Type", "application/json")], body)
                return
            host, port = up.hostname or "127.0.0.1", up.port or 80
            resp, payload = forward(self, host, port, data, headers, local)
            reply(self, resp.status, resp.getheaders(), payload)

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def flowsync(*args: str) -> tuple[int, dict[str, Any], float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOWSYNC_"))}
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flowsync", *args], env=env, capture_output=True, text=True
    )
    seconds = time.monotonic() - began
    try:
        summary = json.loads(proc.stdout)
    except ValueError:
        summary = {}
    return (
        proc.returncode,
        summary,
        seconds,
        proc.stderr.strip().splitlines()[-1:][0] if proc.stderr.strip() else "",
    )


def policy(folder: Path, n: int) -> Path:
    path = folder / "policy.yaml"
    path.write_text(
        "version: 1\nmax_actions: 100000\nrules:\n  - name: purge\n    action: delete\n"
        f"    sql: SELECT id FROM flow_runs WHERE state_type = 'COMPLETED' ORDER BY id LIMIT {n}\n"
    )
    return path


def through_proxy(
    server_url: str, limit: int, folder: Path, name: str, args: list[str]
) -> dict[str, Any]:
    """Run ``flowsync ARGS`` against ``server_url`` behind a fresh limiting proxy; what it saw."""
    limiter = Limiter(limit)
    front = proxy(server_url.removesuffix("/api"), limiter)
    url = f"http://127.0.0.1:{front.server_address[1]}/api"
    try:
        rc, summary, seconds, last = flowsync(*args, "--api-url", url)
    finally:
        front.shutdown()
    passed, throttled = limiter.take()
    if not summary:
        result = last[:160]
    elif args[0] == "pull":
        result = f"{summary.get('inserted', 0)} runs inserted, {summary.get('retries', 0)} retries"
    else:
        res = summary.get("result", {})
        errors = res.get("errors") or []
        result = f"{res.get('done', 0)} done, {res.get('failed', 0)} failed, {res.get('calls', 0)} bulk calls"
        result += f"; {errors[0][:140]}" if errors else ""
    return {
        "variant": name,
        "exit": rc,
        "requests answered": passed,
        "429s": throttled,
        "seconds": round(seconds, 1),
        "result": result,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=1500)
    p.add_argument("--limit", type=int, default=5, help="requests per rolling second at the proxy")
    p.add_argument(
        "--budget", type=float, default=240, help="--max-requests-per-minute for the paced runs"
    )
    p.add_argument("--delete", type=int, default=300, help="runs the apply deletes")
    p.add_argument("--repeat", type=int, default=3, help="pulls of each variant (interleaved)")
    p.add_argument(
        "--apply-repeat", type=int, default=1, help="applies of each variant (interleaved)"
    )
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    paced = ["--max-requests-per-minute", f"{a.budget:g}"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowsync-quota-") as tmp:
        folder = Path(tmp)
        with prefect_server() as server:
            seed(server.url, runs=a.runs, flows=4, deployments_per_flow=3, days=30, seed_value=21)
            for r in range(a.repeat):
                for name, extra in (
                    ("pull", []),
                    (f"pull --max-requests-per-minute {a.budget:g}", paced),
                ):
                    db = folder / f"pull-{r}-{len(extra)}.duckdb"
                    args = ["pull", "--json", "--quiet", "--db", str(db), *extra]
                    rows.append(through_proxy(server.url, a.limit, folder, name, args))
                    print(rows[-1], flush=True)
        applies = [("apply", []), (f"apply --max-requests-per-minute {a.budget:g}", paced)]
        for name, extra in applies * a.apply_repeat:
            with prefect_server() as server:  # a fresh server each: the apply deletes runs
                seed(
                    server.url, runs=a.runs, flows=4, deployments_per_flow=3, days=30, seed_value=21
                )
                db = folder / f"apply-{len(rows)}.duckdb"
                flowsync("pull", "--api-url", server.url, "--db", str(db), "--json", "--quiet")
                args = [
                    "apply",
                    str(policy(folder, a.delete)),
                    "--yes",
                    "--json",
                    "--db",
                    str(db),
                    *extra,
                ]
                rows.append(through_proxy(server.url, a.limit, folder, name, args))
                print(rows[-1], flush=True)
    header = (
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; proxy limit {a.limit} requests "
        f"in any rolling second (429, Retry-After: 1); {a.runs} runs; apply deletes {a.delete}.\n\n"
    )
    table = "| variant | exit | requests answered | 429s | seconds | result |\n|---|---|---|---|---|---|\n"
    table += "".join(
        f"| `{r['variant']}` | {r['exit']} | {r['requests answered']} | {r['429s']} | {r['seconds']} | {r['result']} |\n"
        for r in rows
    )
    print(header + table)
    if a.out:
        a.out.write_text("# Requests under a Cloud-like rate limit\n\n" + header + table)


if __name__ == "__main__":
    main()
