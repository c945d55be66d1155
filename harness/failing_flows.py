"""Real ``@flow`` failures against PREFECT_API_URL: the messages error signatures group.

Each flow fails the way production flows do, twice with different data (ids,
numbers, paths, times), so the normaliser can be tested on the state messages
Prefect itself writes: exceptions with ids and numbers, a missing file, a
timeout, a crash (a BaseException the engine reports as CRASHED).

    python -m harness.failing_flows     # with PREFECT_API_URL set; prints a JSON summary

``run_failing_flows(url)`` runs this in a subprocess (as the tests and the demo do).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FLOW_NAMES = [
    "load-orders",
    "lookup-customer",
    "read-partition",
    "call-api",
    "slow-export",
    "worker-crash",
]


def main() -> None:
    from prefect import flow

    @flow(name="load-orders")
    def load_orders(order: int) -> None:
        raise ValueError(f"order {order} for customer {uuid.uuid4()} failed after {order / 7:.2f}s")

    @flow(name="lookup-customer")
    def lookup_customer(key: str) -> None:
        raise KeyError(key)

    @flow(name="read-partition")
    def read_partition(day: str) -> None:
        Path(f"/tmp/flowsync-missing-{uuid.uuid4().hex[:8]}/{day}/orders.csv").read_text()

    @flow(name="call-api")
    def call_api(order: int) -> None:
        raise RuntimeError(
            f"GET https://api.example.com/v1/orders/{order} returned 503 at "
            f"{datetime.now(timezone.utc).isoformat()} (request 0x{uuid.uuid4().hex[:12]})"
        )

    @flow(name="slow-export", timeout_seconds=1)
    def slow_export(rows: int) -> None:
        time.sleep(3 + rows * 0)

    @flow(name="worker-crash")
    def worker_crash(code: int) -> None:
        raise SystemExit(code)

    out: dict[str, list[str]] = {}

    def record(name: str, state: Any) -> None:
        out.setdefault(name, []).append(str(state.state_details.flow_run_id))

    for i, (order, key, day) in enumerate(
        [(1042, "customer_id", "2026-01-04"), (77, "account", "2026-02-11")]
    ):
        record("load-orders", load_orders(order, return_state=True))
        record("lookup-customer", lookup_customer(key, return_state=True))
        record("read-partition", read_partition(day, return_state=True))
        record("call-api", call_api(order, return_state=True))
        record("slow-export", slow_export(i, return_state=True))
        with contextlib.suppress(
            BaseException
        ):  # the engine re-raises the crash after reporting it
            worker_crash(3 + i)
    print(json.dumps(out))


def run_failing_flows(
    url: str, home: str | os.PathLike[str] | None = None, timeout: float = 300
) -> dict[str, list[str]]:
    """Run ``main`` in a subprocess against ``url``; returns run ids per flow name (crash runs excluded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="ERROR"
    )
    if home:
        env["PREFECT_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.failing_flows"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"failing flows did not run:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
