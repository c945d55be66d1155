"""The floor: fetch every ``/flow_runs/filter`` page with a bare httpx loop and discard it.

No parsing beyond JSON, no storage: the fastest any client can read the runs
over one connection with offset paging. ``--in-flight N`` keeps N pages in
flight (N threads, one connection each, taking the next offset from a shared
counter; done when any page comes back short). Prints a JSON summary line.

``--keyset`` is the floor for large servers, where an offset page deep in the
table costs seconds: the range of expected start times is cut into
``--segments`` equal parts, and N threads each take the next part and walk it
oldest first with ``expected_start_time.after_`` = the last time seen (the
request shape flowsync's full walk sends). A boundary row comes twice; the
floor counts distinct ids.

    python bench/contenders/floor.py --url http://127.0.0.1:4200/api [--in-flight 2] [--keyset]
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--page-size", type=int, default=200)
    p.add_argument("--in-flight", type=int, default=1)
    p.add_argument("--keyset", action="store_true")
    p.add_argument(
        "--segments", type=int, default=0, help="keyset parts (default 16 per page in flight)"
    )
    a = p.parse_args()
    if a.keyset:
        return keyset(a.url, a.page_size, a.in_flight, a.segments or 16 * a.in_flight)
    if a.in_flight > 1:
        return parallel(a.url, a.page_size, a.in_flight)
    began = time.monotonic()
    rows = requests = offset = 0
    with httpx.Client(base_url=a.url.rstrip("/") + "/", timeout=120) as c:
        while True:
            r = c.post(
                "flow_runs/filter", json={"sort": "ID_DESC", "limit": a.page_size, "offset": offset}
            )
            requests += 1
            r.raise_for_status()
            n = len(r.json())
            rows += n
            if n < a.page_size:
                break
            offset += n
    report(began, rows=rows, requests=requests)


def report(began: float, **fields: object) -> None:
    """The summary line every mode prints: what it read and how long it took."""
    print(json.dumps({"rows_in_db": None, **fields, "seconds": round(time.monotonic() - began, 3)}))


def run_threads(worker: Callable[[], None], n: int, errors: list[BaseException]) -> None:
    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def parallel(url: str, page_size: int, in_flight: int) -> None:
    began = time.monotonic()
    offsets = itertools.count(0, page_size)
    lock = threading.Lock()
    done = threading.Event()
    totals = {"rows": 0, "requests": 0}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(base_url=url.rstrip("/") + "/", timeout=120) as c:
                while not done.is_set():
                    with lock:
                        offset = next(offsets)
                    r = c.post(
                        "flow_runs/filter",
                        json={"sort": "ID_DESC", "limit": page_size, "offset": offset},
                    )
                    r.raise_for_status()
                    n = len(r.json())
                    with lock:
                        totals["rows"] += n
                        totals["requests"] += 1
                    if n < page_size:
                        done.set()
        except BaseException as e:
            errors.append(e)
            done.set()

    run_threads(worker, in_flight, errors)
    report(began, rows=totals["rows"], requests=totals["requests"])


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def keyset(url: str, page_size: int, in_flight: int, segments: int) -> None:
    began = time.monotonic()
    base = url.rstrip("/") + "/"
    with httpx.Client(base_url=base, timeout=120) as c:
        ends = []
        for sort in ("EXPECTED_START_TIME_ASC", "EXPECTED_START_TIME_DESC"):
            r = c.post("flow_runs/filter", json={"sort": sort, "limit": 1})
            r.raise_for_status()
            ends.append(_ts(r.json()[0]["expected_start_time"]))
    lo, hi = ends
    step = (hi - lo) / segments
    # Parts [edge_k, edge_k+1): the last part is closed at hi; each part's own rows only.
    edges = [lo + step * k for k in range(segments)] + [hi + timedelta(microseconds=1)]
    parts = iter(range(segments))
    lock = threading.Lock()
    seen: set[str] = set()
    totals = {"rows": 0, "requests": 2, "slowest_s": 0.0}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(base_url=base, timeout=120) as c:
                while not errors:
                    with lock:
                        k = next(parts, None)
                    if k is None:
                        return
                    after, end = edges[k], edges[k + 1]
                    before = end - timedelta(microseconds=1)
                    while True:
                        window = {"after_": after.isoformat(), "before_": before.isoformat()}
                        t = time.monotonic()
                        r = c.post(
                            "flow_runs/filter",
                            json={
                                "flow_runs": {"expected_start_time": window},
                                "sort": "EXPECTED_START_TIME_ASC",
                                "limit": page_size,
                            },
                        )
                        took = time.monotonic() - t
                        r.raise_for_status()
                        rows = r.json()
                        with lock:
                            totals["requests"] += 1
                            totals["rows"] += len(rows)
                            totals["slowest_s"] = max(totals["slowest_s"], took)
                            seen.update(o["id"] for o in rows)
                        if len(rows) < page_size:
                            break
                        last = _ts(rows[-1]["expected_start_time"])
                        if last <= after:
                            raise RuntimeError(f"a full page on one expected start time ({last})")
                        after = last
        except BaseException as e:
            errors.append(e)

    run_threads(worker, in_flight, errors)
    report(
        began,
        rows=len(seen),
        rows_read=totals["rows"],
        requests=totals["requests"],
        slowest_s=round(totals["slowest_s"], 3),
    )


if __name__ == "__main__":
    main()
