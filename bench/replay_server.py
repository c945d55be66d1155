"""A tiny loopback server that replays real Prefect pages, for measuring flowsync's own CPU.

``bench_pull_cpu`` captures flows, deployments and a few pages of flow runs from a
real seeded Prefect 3.8.8 server once (``capture``), then starts this server in a
process of its own, so that its CPU is not the client's: it answers the requests
a full pull makes (``/health``, the catalog listings, counts, the expected-start
range ends, ``/flow_runs/history``, keyset pages by ``expected_start_time``, reads
by id) for ``--runs`` synthetic runs. Run ``i`` is captured run ``i % T`` with its
id replaced by ``uuid(BASE + i)`` and its ``expected_start_time`` by
``START + i * STEP`` seconds, every other field as the server sent it; the bodies
are the server's own JSON text with those two values swapped.

Not a Prefect server: it knows no other filter, and answers 404 elsewhere.

    python -m bench.replay_server CAPTURE.json RUNS PORT
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BASE = 0x5EED_0000_0000_4000_8000_0000_0000_0000
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEP = 7  # seconds between consecutive runs' expected start
ID_MARK = "@@flowsync-id@@"
TS_MARK = "@@flowsync-ts@@"


def run_id(i: int) -> str:
    return str(uuid.UUID(int=BASE + i))


def run_index(value: str) -> int | None:
    try:
        i = uuid.UUID(value).int - BASE
    except ValueError:
        return None
    return i if i >= 0 else None


def ts(i: int) -> str:
    return (START + timedelta(seconds=STEP * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def first_at_or_after(value: str, n: int) -> int:
    """Index of the first run whose expected start is >= value."""
    seconds = (_parse(value) - START).total_seconds()
    return min(n, max(0, -int(-seconds // STEP)))


def first_after(value: str, n: int) -> int:
    """Index of the first run whose expected start is > value."""
    seconds = (_parse(value) - START).total_seconds()
    return min(n, max(0, int(seconds // STEP) + 1))


class Replay:
    def __init__(self, capture: dict[str, Any], runs: int) -> None:
        self.n = runs
        self.flows = capture["flows"]
        self.deployments = capture["deployments"]
        self.templates: list[str] = []
        for obj in capture["runs"]:
            obj = dict(obj, id=ID_MARK, expected_start_time=TS_MARK)
            self.templates.append(json.dumps(obj, separators=(",", ":")))

    def run_text(self, i: int) -> str:
        t = self.templates[i % len(self.templates)]
        return t.replace(ID_MARK, run_id(i), 1).replace(TS_MARK, ts(i), 1)

    def window(self, flt: dict[str, Any]) -> tuple[int, int]:
        est = (flt.get("flow_runs") or {}).get("expected_start_time") or {}
        lo = first_at_or_after(est["after_"], self.n) if est.get("after_") else 0
        hi = first_after(est["before_"], self.n) if est.get("before_") else self.n
        return lo, max(lo, hi)

    def runs_filter(self, body: dict[str, Any]) -> str:
        ids = ((body.get("flow_runs") or {}).get("id") or {}).get("any_")
        limit, offset = int(body.get("limit") or 200), int(body.get("offset") or 0)
        if ids is not None:
            found = sorted(i for i in map(run_index, ids) if i is not None and i < self.n)
            chosen = found[offset : offset + limit]
        else:
            lo, hi = self.window(body)
            order = range(lo, hi)
            if body.get("sort") in ("EXPECTED_START_TIME_DESC", "ID_DESC"):
                order = range(hi - 1, lo - 1, -1)
            chosen = list(order[offset : offset + limit])
        return "[" + ",".join(self.run_text(i) for i in chosen) + "]"

    def history(self, body: dict[str, Any]) -> str:
        start, end = _parse(body["history_start"]), _parse(body["history_end"])
        step = timedelta(seconds=float(body["history_interval_seconds"]))
        edges = []
        t = start
        while t < end:
            edges.append(t)
            t += step
        out = []
        for a in edges:
            b = a + step
            lo = first_at_or_after(a.isoformat(), self.n)
            hi = first_at_or_after(b.isoformat(), self.n)
            states = []
            if hi > lo:
                states.append(
                    {
                        "state_type": "COMPLETED",
                        "state_name": "Completed",
                        "count_runs": hi - lo,
                        "sum_estimated_run_time": 0.0,
                        "sum_estimated_lateness": 0.0,
                    }
                )
            out.append(
                {"interval_start": a.isoformat(), "interval_end": b.isoformat(), "states": states}
            )
        return json.dumps(out)

    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, str]:
        path = path.split("?")[0].removeprefix("/api/").strip("/")
        if method == "GET" and path == "health":
            return 200, "true"
        if method == "GET" and path == "admin/version":
            return 200, '"3.8.8"'
        if path in ("flows/filter", "deployments/filter"):
            items = self.flows if path.startswith("flows") else self.deployments
            ids = ((body.get(path.split("/")[0]) or {}).get("id") or {}).get("any_")
            if ids is not None:
                items = [o for o in items if o["id"] in set(ids)]
            offset, limit = int(body.get("offset") or 0), int(body.get("limit") or 200)
            return 200, json.dumps(items[offset : offset + limit])
        if path in ("flows/count", "deployments/count"):
            return 200, str(len(self.flows if path.startswith("flows") else self.deployments))
        if path == "flow_runs/count":
            lo, hi = self.window(body)
            return 200, str(hi - lo)
        if path == "flow_runs/filter":
            return 200, self.runs_filter(body)
        if path == "flow_runs/history":
            return 200, self.history(body)
        return 404, json.dumps({"detail": "Not Found"})


def serve(capture_path: str, runs: int, port: int) -> None:
    with open(capture_path) as f:
        replay = Replay(json.load(f), runs)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            status, text = replay.answer(method, self.path, body or {})
            data = text.encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            self._reply("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
