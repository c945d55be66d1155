"""Benchmark: how fast any client that re-reads each batch before its call can delete.

Four contenders delete runs through the API of a PostgreSQL-backed Prefect server (a fresh
copy of the ``harness.pg_seed`` database, as ``bench_apply_bulk``), 50 explicit ids a call,
with no client work beyond the requests, interleaved in ``--rounds``:

- ``loop``: ``bulk_delete`` calls one after the other (``bench_apply_bulk``'s yardstick);
- ``loop2``: the same in two lanes (two connections, a call of each out at once);
- ``rr``: per batch a re-read (``/flow_runs/filter`` by id) and then the call guarded by the
  state types it showed, one batch after the other: the ceiling of a serial apply;
- ``rr2``: the same in two lanes: the ceiling of an apply with two calls out.

    python -m bench.bench_apply_ceiling --workers 2 --chunk 5000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.bench_apply_bulk import fresh_server, pulled_file, victims

BULK = 50
KINDS = [("loop", 1, False), ("loop2", 2, False), ("rr", 1, True), ("rr2", 2, True)]


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", flush=True)


def delete(client: httpx.Client, ids: list[str], reread: bool) -> None:
    for i in range(0, len(ids), BULK):
        chunk = ids[i : i + BULK]
        guard: dict[str, object] = {"id": {"any_": chunk}}
        if reread:
            found = client.post("flow_runs/filter", json={"flow_runs": guard, "limit": len(chunk)})
            found.raise_for_status()
            types = sorted({r["state_type"] for r in found.json() if r.get("state_type")})
            guard = {"id": {"any_": chunk}, "state": {"type": {"any_": types}}}
        client.post(
            "flow_runs/bulk_delete", json={"flow_runs": guard, "limit": len(chunk)}
        ).raise_for_status()


def contender(url: str, ids: list[str], lanes: int, reread: bool) -> float:
    """runs/s of deleting ``ids`` in ``lanes`` lanes, each its own connection."""
    chunks = [ids[i : i + BULK] for i in range(0, len(ids), BULK)]
    parts = [[i for c in chunks[k::lanes] for i in c] for k in range(lanes)]

    def lane(part: list[str]) -> None:
        with httpx.Client(base_url=url + "/", timeout=120) as client:
            delete(client, part, reread)

    began = time.perf_counter()
    threads = [threading.Thread(target=lane, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ids) / (time.perf_counter() - began)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=1_000_000, help="runs on the server")
    p.add_argument("--workers", type=int, choices=(1, 2), default=1, help="API workers")
    p.add_argument("--chunk", type=int, default=5000, help="runs each contender deletes a round")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    db = Path(tempfile.mkdtemp(prefix="flowsync-ceiling-")) / "runs.duckdb"
    with fresh_server(a.runs, a.workers, log) as (server, root):
        pulled_file(server.url, db, root, log)
        sets = iter(victims(db, a.runs // a.chunk, len(KINDS) * a.rounds))
        rates: dict[str, list[float]] = {k[0]: [] for k in KINDS}
        for r in range(a.rounds):
            for name, lanes, reread in KINDS if r % 2 == 0 else KINDS[::-1]:
                rate = contender(server.url, next(sets), lanes, reread)
                rates[name].append(rate)
                log(f"round {r + 1} {name}: {rate:.0f} runs/s, load {os.getloadavg()[0]:.1f}")
    loop = sum(rates["loop"]) / len(rates["loop"])
    print(f"\n| contender ({a.workers} API worker{'s' * (a.workers > 1)}) | runs/s | / loop |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        mean = sum(values) / len(values)
        print(
            f"| {name} | {mean:,.0f} ({', '.join(f'{v:.0f}' for v in values)}) | {mean / loop:.2f}x |"
        )


if __name__ == "__main__":
    main()
