"""The floor: fetch every ``/flow_runs/filter`` page with a bare httpx loop and discard it.

No parsing beyond JSON, no storage: the fastest any client can read the runs
over one connection with offset paging. Prints a JSON summary line.

    python bench/contenders/floor.py --url http://127.0.0.1:4200/api
"""

from __future__ import annotations

import argparse
import json
import time

import httpx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--page-size", type=int, default=200)
    a = p.parse_args()
    began = time.monotonic()
    rows = requests = offset = 0
    with httpx.Client(base_url=a.url.rstrip("/") + "/", timeout=120) as c:
        while True:
            r = c.post("flow_runs/filter", json={"sort": "ID_DESC", "limit": a.page_size, "offset": offset})
            requests += 1
            r.raise_for_status()
            n = len(r.json())
            rows += n
            if n < a.page_size:
                break
            offset += n
    print(json.dumps({"rows": rows, "rows_in_db": None, "requests": requests,
                      "seconds": round(time.monotonic() - began, 3)}))


if __name__ == "__main__":
    main()
