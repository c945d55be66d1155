"""The floor: fetch every ``/flow_runs/filter`` page with a bare httpx loop and discard it.

No parsing beyond JSON, no storage: the fastest any client can read the runs
over one connection with offset paging. ``--in-flight N`` keeps N pages in
flight (N threads, one connection each, taking the next offset from a shared
counter; done when any page comes back short). Prints a JSON summary line.

    python bench/contenders/floor.py --url http://127.0.0.1:4200/api [--in-flight 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time

import httpx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--page-size", type=int, default=200)
    p.add_argument("--in-flight", type=int, default=1)
    a = p.parse_args()
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
    print(
        json.dumps(
            {
                "rows": rows,
                "rows_in_db": None,
                "requests": requests,
                "seconds": round(time.monotonic() - began, 3),
            }
        )
    )


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

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    print(
        json.dumps(
            {
                "rows": totals["rows"],
                "rows_in_db": None,
                "requests": totals["requests"],
                "seconds": round(time.monotonic() - began, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
