"""flowsync's own CPU per run in a full pull, with the server out of the loop.

The Prefect server is CPU-bound and shares the machine with the client in the
other pull benchmarks, so its time hides the client's. Here the pages are real
(flows, deployments and 2,000 flow runs captured once from a fast-seeded
Prefect 3.8.8 server, ``bench/.work/replay-capture.json``) but are served by
``bench.replay_server`` in a process of its own, multiplied to ``--runs`` runs
with new ids and expected start times. Each measurement is a fresh child process
that runs the real pull (``flowsync.sync.pull``: api client -> sync/runs.py ->
store writes) into a new DuckDB file and reports, for the pull alone: process
CPU seconds (all threads, ``time.process_time``), CPU microseconds per run, wall
seconds, peak RSS of the process (``ru_maxrss``) and a digest of what landed in
``flow_runs`` (every column but ``synced_at``/``seen_pull``), so that two code
versions can be checked to write the same file.

``--src`` may be given several times (a ``src`` directory each, e.g. main's and
a worktree's): the versions run interleaved, ``--repeat`` rounds.

    python -m bench.bench_pull_cpu --runs 200000 --repeat 3 --src /work/main/src --src src

Where the time goes: run the child under py-spy (``--child`` prints the command).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

WORK = Path(__file__).resolve().parent / ".work"
CAPTURE = WORK / "replay-capture.json"
ROOT = Path(__file__).resolve().parent.parent


def capture(path: Path = CAPTURE, runs: int = 2000) -> Path:
    """Flows, deployments and ``runs`` flow runs from a fast-seeded real server, as it sent them."""
    if path.exists():
        return path
    from harness.fast_seed import fast_seed
    from harness.server import prefect_server

    seeded = fast_seed(runs)
    with prefect_server(home=seeded.home) as server, httpx.Client(base_url=server.url + "/") as c:
        version = c.get("admin/version").json()

        def every(resource: str, body: dict[str, Any]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            while True:
                page = c.post(
                    f"{resource}/filter", json={**body, "limit": 200, "offset": len(out)}
                ).json()
                out += page
                if len(page) < 200:
                    return out

        doc = {
            "server_version": version,
            "flows": every("flows", {"sort": "CREATED_DESC"}),
            "deployments": every("deployments", {"sort": "CREATED_DESC"}),
            "runs": every("flow_runs", {"sort": "EXPECTED_START_TIME_ASC"}),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child(url: str, runs: int, concurrency: int, db: Path) -> dict[str, Any]:
    """One full pull in this process; the figures of the pull alone."""
    from flowsync.api import PrefectClient
    from flowsync.config import resolve_api
    from flowsync.store import Store
    from flowsync.sync import pull
    from flowsync.sync.context import PullOptions

    # A version from before the store's roles (``--src`` of an older checkout) opens by flags.
    writer = Store.writer if hasattr(Store, "writer") else Store.open  # type: ignore[attr-defined]
    with writer(db) as store, PrefectClient(resolve_api(url, None)) as client:
        cpu0, wall0 = time.process_time(), time.monotonic()
        result = pull(client, store, PullOptions(concurrency=concurrency))
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        rows, digest = store.execute(
            """
            SELECT count(*), bit_xor(hash(CAST(t AS VARCHAR)))
            FROM (SELECT * EXCLUDE (synced_at, seen_pull) FROM flow_runs) t
            """
        ).one() or (0, 0)
    return {
        "runs": runs,
        "rows": int(rows),
        "digest": str(digest),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_run": round(cpu / max(runs, 1) * 1e6, 1),
        "wall_s": round(wall, 3),
        "requests": result.requests,
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure(src: str, url: str, runs: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flowsync-cpu-") as tmp:
        env = {**os.environ, "PYTHONPATH": f"{Path(src).resolve()}:{ROOT}"}
        cmd = [sys.executable, "-m", "bench.bench_pull_cpu", "--child", url, str(runs)]
        cmd += [str(concurrency), str(Path(tmp) / "cpu.duckdb")]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"child failed ({src}):\n{out.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        if figures["rows"] != runs:
            raise RuntimeError(f"the pull ({src}) wrote {figures['rows']} runs, not {runs}")
        figures["src"] = src
        return figures


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--src", action="append", default=None, help="a src/ directory (repeatable)")
    p.add_argument("--child", nargs=4, metavar=("URL", "RUNS", "CONCURRENCY", "DB"))
    p.add_argument("--serve", action="store_true", help="only start the replay server and wait")
    a = p.parse_args()
    if a.child:
        url, runs, conc, db = a.child
        print(json.dumps(child(url, int(runs), int(conc), Path(db))))
        return
    srcs = a.src or [str(ROOT / "src")]
    cap = capture()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.replay_server", str(cap), str(a.runs), str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "ready"
        url = f"http://127.0.0.1:{port}/api"
        if a.serve:
            print(f"replaying {a.runs} runs at {url}; child command:")
            print(f"  python -m bench.bench_pull_cpu --child {url} {a.runs} {a.concurrency} DB")
            server.wait()
            return
        results: list[dict[str, Any]] = []
        for r in range(a.repeat):
            for src in srcs:
                load = os.getloadavg()[0]
                fig = measure(src, url, a.runs, a.concurrency)
                fig.update(round=r + 1, load=round(load, 2))
                results.append(fig)
                print(json.dumps(fig), flush=True)
        print(f"\nfull pull of {a.runs:,} replayed runs, concurrency {a.concurrency}, medians:")
        print("| src | CPU us/run | CPU s | wall s | peak RSS MB | rows | digest |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for src in srcs:
            mine = [f for f in results if f["src"] == src]
            med = {
                k: statistics.median(f[k] for f in mine)
                for k in ("cpu_us_per_run", "cpu_s", "wall_s", "maxrss_mb")
            }
            digests = sorted({f["digest"] for f in mine})
            print(
                f"| {src} | {med['cpu_us_per_run']:.1f} | {med['cpu_s']:.1f} | {med['wall_s']:.1f} "
                f"| {med['maxrss_mb']:.0f} | {mine[0]['rows']:,} | {', '.join(digests)} |"
            )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
