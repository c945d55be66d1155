"""Benchmark ``flowsync pull`` against what users would write instead, on one seeded server.

One command reproduces every figure in BENCHMARKS.md (pull part):

    .venv/bin/python -m bench.bench_pull --runs 20000 --repeat 3 --scale 10000,100000

It fast-seeds a Prefect server (``harness.fast_seed``, reused from bench/.work/),
starts it with ``harness.server.prefect_server``, creates the contenders'
virtualenvs if missing (bench/.work/venv-dlt, bench/.work/venv-prefect), and
runs every contender as its own process, interleaved (A B C ... A B C ...):

- floor: a bare httpx loop over every /flow_runs/filter page, discarded;
- flowsync full pull (new file; ``--concurrency`` 1, 2 (default), 3);
- flowsync no-change pull (second pull on the same file);
- flowsync after 1% of runs changed state (bulk_set_state, force, 50 ids a
  call, then a 10 s wait for the server's event persister);
- dlt: the rest_api source -> DuckDB, merge on id (its own venv);
- Prefect's client: read_flow_runs pages -> DuckDB (its own venv).

Per run it records wall time, the contender's own in-process seconds, CPU
seconds, peak RSS (``os.wait4`` rusage of that child), and the rows in the
resulting DuckDB against the server's ``/flow_runs/count``. Requests are
counted in one extra untimed pass through a counting proxy
(bench/contenders/count_proxy.py). With ``--scale`` it also measures a full
flowsync pull's peak RSS at other sizes. Results: bench/results/pull.md
(tables) and bench/results/pull.raw (JSON, gitignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import httpx

from harness.fast_seed import WORK, fast_seed
from harness.seed import set_states
from harness.server import Server, prefect_server

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = Path(__file__).resolve().parent / "contenders"
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
FLOWSYNC = str(Path(sys.executable).parent / "flowsync")
VENV_DLT = WORK / "venv-dlt"
VENV_PREFECT = WORK / "venv-prefect"
VENV_PACKAGES = {
    VENV_DLT: ["dlt[duckdb]"],
    VENV_PREFECT: ["prefect==3.8.8", "fastapi==0.154.0", "duckdb"],
}
CHANGE_WAIT = 10.0  # the server's event persister flushes every few seconds
ORDER = [
    "floor (httpx loop)",
    "flowsync full c=2",
    "flowsync full c=1",
    "flowsync full c=3",
    "flowsync no-change",
    "flowsync 1% changed",
    "dlt rest_api",
    "prefect client loop",
]
CHANGE_STATES = [("CANCELLED", "Cancelled"), ("COMPLETED", "Completed"), ("FAILED", "Failed")]


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    contender: str
    rep: int
    wall: float
    seconds: float | None  # the contender's own timing, after imports
    cpu: float
    rss_mb: float
    rows: int | None
    rows_in_db: int | None
    expected: int
    requests: int | None = None
    ok: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# -- processes ------------------------------------------------------------------


def ensure_venvs() -> None:
    for venv, packages in VENV_PACKAGES.items():
        if (venv / "bin" / "python").exists():
            continue
        log(f"creating {venv} ({' '.join(packages)})")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True
        )


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOWSYNC_"))}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_child(
    cmd: list[str], env: dict[str, str], timeout: float = 3600
) -> tuple[float, int, float, float, str, str]:
    """Run one process; return wall s, exit code, peak RSS MB, CPU s, stdout, stderr (its own rusage)."""
    out_path = WORK / "scratch" / "child.out"
    err_path = WORK / "scratch" / "child.err"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("wb") as out_f, err_path.open("wb") as err_f:
        began = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out_f, stderr=err_f, cwd=ROOT)
        deadline = began + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        wall,
        proc.returncode,
        usage.ru_maxrss / 1024,
        usage.ru_utime + usage.ru_stime,
        out_path.read_text(),
        err_path.read_text(),
    )


def last_json(text: str) -> dict[str, Any]:
    """The JSON document a contender printed last (flowsync prints an indented one)."""
    text = text.strip()
    start = text.rfind("\n{")
    candidates = [text[start + 1 :]] if start >= 0 else []
    candidates.append(text[text.find("{") :] if "{" in text else "")
    candidates.extend(line for line in reversed(text.splitlines()) if line.startswith("{"))
    for c in candidates:
        try:
            value = json.loads(c)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"no JSON summary in output: {text[-500:]!r}")


# -- contenders -------------------------------------------------------------------


class Bench:
    def __init__(self, server: Server, expected: int, scratch: Path) -> None:
        self.server = server
        self.url = server.url
        self.expected = expected
        self.scratch = scratch
        self.runs: list[Run] = []
        self.seq = 0

    def path(self, stem: str) -> Path:
        self.seq += 1
        return self.scratch / f"{self.seq:03d}-{stem}"

    def count(self) -> int:
        r = httpx.post(f"{self.url}/flow_runs/count", json={}, timeout=60)
        r.raise_for_status()
        return int(r.json())

    def _record(
        self, name: str, rep: int, cmd: list[str], env: dict[str, str], check: Any = None
    ) -> Run:
        expected = self.count()
        wall, rc, rss, cpu, out, err = run_child(cmd, env)
        if rc != 0:
            raise RuntimeError(f"{name} failed ({rc}):\n{out[-2000:]}\n{err[-3000:]}")
        summary = last_json(out)
        rows_in_db = check() if check else summary.get("rows_in_db")
        run = Run(
            contender=name,
            rep=rep,
            wall=wall,
            seconds=summary.get("seconds"),
            cpu=cpu,
            rss_mb=rss,
            rows=summary.get("rows"),
            rows_in_db=rows_in_db,
            expected=expected,
            requests=summary.get("requests"),
            ok=(rows_in_db == expected) if rows_in_db is not None else True,
            extra={
                k: summary[k]
                for k in ("inserted", "updated", "mode", "fetch_s", "write_s")
                if k in summary
            },
        )
        if rep >= 0:
            self.runs.append(run)
        log(
            f"{name:<22} rep {rep}: {wall:6.2f}s wall, {run.seconds or 0:6.2f}s own, {rss:6.0f} MB, "
            f"rows {rows_in_db}/{expected}, requests {run.requests} {run.extra}"
        )
        return run

    def floor(self, rep: int, url: str | None = None) -> Run:
        cmd = [PY, str(CONTENDERS / "floor.py"), "--url", url or self.url]
        return self._record("floor (httpx loop)", rep, cmd, child_env())

    def flowsync(self, name: str, rep: int, db: Path, *args: str, url: str | None = None) -> Run:
        cmd = [
            FLOWSYNC,
            "pull",
            "--api-url",
            url or self.url,
            "--db",
            str(db),
            "--json",
            "--quiet",
            *args,
        ]
        return self._record(name, rep, cmd, child_env(), check=lambda: flowsync_rows(db))

    def dlt(self, rep: int, url: str | None = None) -> Run:
        db, work = self.path("dlt.duckdb"), self.path("dlt-work")
        cmd = [
            str(VENV_DLT / "bin" / "python"),
            str(CONTENDERS / "dlt_pull.py"),
            "--url",
            url or self.url,
            "--db",
            str(db),
            "--work",
            str(work),
        ]
        env = child_env(DLT_DATA_DIR=str(work), RUNTIME__LOG_LEVEL="WARNING")
        try:
            return self._record("dlt rest_api", rep, cmd, env)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            db.unlink(missing_ok=True)

    def prefect_client(self, rep: int, url: str | None = None) -> Run:
        db = self.path("prefect.duckdb")
        home = WORK / "client-home"
        home.mkdir(exist_ok=True)
        cmd = [
            str(VENV_PREFECT / "bin" / "python"),
            str(CONTENDERS / "prefect_client_pull.py"),
            "--db",
            str(db),
        ]
        env = child_env(
            PREFECT_API_URL=url or self.url,
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        try:
            return self._record("prefect client loop", rep, cmd, env)
        finally:
            db.unlink(missing_ok=True)

    def change_one_percent(self, ids: list[str], rep: int) -> list[str]:
        rng = random.Random(1000 + rep)
        chosen = rng.sample(ids, max(1, len(ids) // 100))
        state_type, state_name = CHANGE_STATES[rep % len(CHANGE_STATES)]
        with httpx.Client(base_url=self.url + "/", timeout=120) as c:
            set_states(c, chosen, state_type, state_name)
        return chosen


def flowsync_rows(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def changed_seen(db: Path, ids: list[str], state_type: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT count(*) FROM flow_runs WHERE CAST(id AS VARCHAR) IN (SELECT unnest(?)) AND state_type = ?",
            [ids, state_type],
        ).fetchone()
    return int(row[0]) if row else 0


def all_ids(url: str) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url=url + "/", timeout=120) as c:
        while True:
            r = c.post(
                "flow_runs/filter", json={"sort": "ID_DESC", "limit": 200, "offset": len(ids)}
            )
            r.raise_for_status()
            page = [o["id"] for o in r.json()]
            ids.extend(page)
            if len(page) < 200:
                return ids


# -- the runs -----------------------------------------------------------------------


def count_requests(b: Bench, scratch: Path) -> dict[str, int]:
    """One untimed pass through the counting proxy: requests per contender."""
    upstream = b.url.rsplit("/api", 1)[0]
    proc = subprocess.Popen(
        [PY, str(CONTENDERS / "count_proxy.py"), "--upstream", upstream],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        proxy = f"http://127.0.0.1:{port}/api"

        def taken() -> int:
            counts = httpx.get(f"http://127.0.0.1:{port}/__count__", timeout=30).json()
            return sum(counts.values())

        out: dict[str, int] = {}
        b.floor(-1, proxy)
        out["floor (httpx loop)"] = taken()
        db = scratch / "count-pass.duckdb"
        b.flowsync("flowsync full c=2", -1, db, url=proxy)
        out["flowsync full c=2"] = taken()
        b.flowsync("flowsync no-change", -1, db, url=proxy)
        out["flowsync no-change"] = taken()
        b.dlt(-1, proxy)
        out["dlt rest_api"] = taken()
        b.prefect_client(-1, proxy)
        out["prefect client loop"] = taken()
        db.unlink(missing_ok=True)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main_runs(b: Bench, repeat: int, concurrency: list[int], scratch: Path) -> dict[str, Any]:
    ids = all_ids(b.url)
    log(f"{len(ids)} runs on the server; warm-up")
    b.floor(-1)
    prev = scratch / "warm.duckdb"
    b.flowsync("flowsync full c=2", -1, prev)
    changes: list[dict[str, Any]] = []
    for rep in range(repeat):
        log(f"-- repetition {rep + 1}/{repeat}")
        chosen = b.change_one_percent(ids, rep)
        time.sleep(CHANGE_WAIT)
        run = b.flowsync("flowsync 1% changed", rep, prev)
        state_type = CHANGE_STATES[rep % len(CHANGE_STATES)][0]
        seen = changed_seen(prev, chosen, state_type)
        run.extra["changed"] = len(chosen)
        run.extra["changed_seen"] = seen
        run.ok = run.ok and seen == len(chosen)
        changes.append({"rep": rep, "changed": len(chosen), "seen": seen})
        prev.unlink(missing_ok=True)
        b.floor(rep)
        db = b.path("flowsync.duckdb")
        b.flowsync("flowsync full c=2", rep, db, "--concurrency", "2")
        b.flowsync("flowsync no-change", rep, db)
        prev = db
        b.dlt(rep)
        b.prefect_client(rep)
        for c in concurrency:
            if c == 2:
                continue
            other = b.path(f"flowsync-c{c}.duckdb")
            b.flowsync(f"flowsync full c={c}", rep, other, "--concurrency", str(c))
            other.unlink(missing_ok=True)
    return {"changes": changes, "profile": profile(b, scratch) if profile_top else ""}


def profile(b: Bench, scratch: Path) -> str:
    """One untimed full pull under cProfile: where a pull spends its time."""
    db, prof = scratch / "profile.duckdb", scratch / "pull.prof"
    cmd = [
        PY,
        "-m",
        "cProfile",
        "-o",
        str(prof),
        "-m",
        "flowsync",
        "pull",
        "--api-url",
        b.url,
        "--db",
        str(db),
        "--json",
        "--quiet",
    ]
    wall, rc, _rss, _cpu, _out, err = run_child(cmd, child_env())
    if rc != 0:
        return f"profile run failed: {err[-500:]}"
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.sort_stats("cumulative").print_stats(profile_top)
    log(f"profiled full pull: {wall:.1f}s wall")
    return f"wall {wall:.2f}s under cProfile\n" + buf.getvalue()


profile_top = 45


def scale_runs(sizes: list[int], repeat: int, scratch: Path) -> list[Run]:
    out: list[Run] = []
    for n in sizes:
        seeded = fast_seed(n, log=log)
        log(f"scale point {n}: {seeded.home} ({'reused' if seeded.reused else 'seeded'})")
        with prefect_server(home=seeded.home) as server:
            b = Bench(server, n, scratch)
            b.floor(-1)
            for rep in range(repeat):
                b.floor(rep)
                db = b.path(f"scale-{n}.duckdb")
                b.flowsync("flowsync full c=2", rep, db)
                db.unlink(missing_ok=True)
            for r in b.runs:
                r.extra["n"] = n
            out.extend(b.runs)
    return out


# -- reporting ----------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    total = mem[1].split()[1] if len(mem) > 1 else "?"
    prefect_version = subprocess.run(
        [str(Path(PY).parent / "prefect"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cores": str(os.cpu_count()),
        "memory": total,
        "cpu": cpu,
        "python": platform.python_version(),
        "prefect": prefect_version,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[Run], requests: dict[str, int]) -> list[dict[str, Any]]:
    names = sorted(
        {r.contender for r in runs}, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)
    )
    floor = [r for r in runs if r.contender.startswith("floor")]
    rows = []
    for name in names:
        mine = [r for r in runs if r.contender == name]
        wall = med([r.wall for r in mine])
        own = med([r.seconds for r in mine if r.seconds is not None])
        n = mine[0].expected
        reported = [r.requests for r in mine if r.requests is not None]
        rows.append(
            {
                "contender": name,
                "runs": len(mine),
                "wall": wall,
                "walls": [r.wall for r in mine],
                "own": own,
                "rows_per_s": n / wall if wall else float("nan"),
                "rows_per_s_own": n / own if own else float("nan"),
                # Paired within a repetition (same server load), then the median over repetitions.
                "vs_floor": paired(floor, mine, "wall"),
                "vs_floor_own": paired(floor, mine, "seconds"),
                "by_rep": {r.rep: (r.wall, r.seconds) for r in mine},
                "requests": requests.get(
                    name, int(med([float(x) for x in reported])) if reported else None
                ),
                "self_requests": int(med([float(x) for x in reported])) if reported else None,
                "cpu": med([r.cpu for r in mine]),
                "rss": max(r.rss_mb for r in mine),
                "check": "ok" if all(r.ok for r in mine) else "MISMATCH",
                "rows_in_db": sorted({r.rows_in_db for r in mine}, key=str),
                "expected": sorted({r.expected for r in mine}),
                "extra": [r.extra for r in mine],
            }
        )
    return rows


def paired(a: list[Run], b: list[Run], attr: str) -> float:
    """Median over repetitions of a's value / b's value in the same repetition."""
    a_by = {r.rep: getattr(r, attr) for r in a}
    ratios = [a_by[r.rep] / getattr(r, attr) for r in b if a_by.get(r.rep) and getattr(r, attr)]
    return med(ratios)


def ratio(rows: dict[str, Any], a: str, b: str, i: int) -> float:
    """Median over repetitions of a's time / b's time (i: 0 wall, 1 in-process)."""
    ra, rb = rows[a]["by_rep"], rows[b]["by_rep"]
    return med([ra[k][i] / rb[k][i] for k in ra if k in rb and ra[k][i] and rb[k][i]])


def ratios(rows: dict[str, Any], a: str, b: str) -> tuple[float, float]:
    """``ratio`` by wall time and by in-process time."""
    return ratio(rows, a, b, 0), ratio(rows, a, b, 1)


def share(
    rows: dict[str, Any], name: str, limit: float, wall_note: str = ""
) -> tuple[str, str, bool]:
    """The target "``name`` takes <= ``limit`` of a full pull's time", held to in-process time."""
    v, v_own = ratios(rows, name, "flowsync full c=2")
    pull = name.removeprefix("flowsync ")
    return (
        f"{pull} pull <= {limit:.0%} of a full pull's time",
        f"{v:.1%} by wall time{wall_note}, {v_own:.1%} in-process",
        v_own <= limit,
    )


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| contender | runs | wall s (median) | own s | rows/s (wall) | x floor speed (wall) | x floor speed (own) "
        "| requests | CPU s | peak RSS MB | rows == /count |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        req = r["requests"]
        if req is not None and r["self_requests"] is not None and r["self_requests"] != req:
            req = f"{req} (self: {r['self_requests']})"
        lines.append(
            f"| {r['contender']} | {r['runs']} | {fmt(r['wall'])} | {fmt(r['own'])} | {fmt(r['rows_per_s'], ',.0f')} "
            f"| {fmt(r['vs_floor'])} | {fmt(r['vs_floor_own'])} | {req if req is not None else 'n/a'} "
            f"| {fmt(r['cpu'], '.1f')} | {fmt(r['rss'], '.0f')} | {r['check']} ({'/'.join(map(str, r['rows_in_db']))}) |"
        )
    return head + "\n".join(lines) + "\n"


def targets(rows: list[dict[str, Any]], scale: list[Run]) -> list[tuple[str, str, bool]]:
    by = {r["contender"]: r for r in rows}
    out: list[tuple[str, str, bool]] = []
    full, floor, dlt = (
        by.get("flowsync full c=2"),
        by.get("floor (httpx loop)"),
        by.get("dlt rest_api"),
    )
    if full and floor:
        v, v_own = full["vs_floor"], full["vs_floor_own"]
        out.append(
            (
                "full pull >= 0.85x the floor's rows/s",
                f"{v:.2f}x by wall time, {v_own:.2f}x by in-process time",
                min(v, v_own) >= 0.85,
            )
        )
    if full and dlt:
        v, v_own = ratios(by, "dlt rest_api", "flowsync full c=2")
        out.append(
            (
                "full pull >= 2x dlt's rows/s",
                f"{v:.2f}x by wall time, {v_own:.2f}x in-process",
                min(v, v_own) >= 2,
            )
        )
    nc = by.get("flowsync no-change")
    if full and nc:
        out.append(share(by, "flowsync no-change", 0.03, " (incl. ~process start)"))
        out.append(
            ("no-change pull <= 10 requests", str(nc["requests"]), (nc["requests"] or 99) <= 10)
        )
    inc = by.get("flowsync 1% changed")
    if full and inc:
        out.append(share(by, "flowsync 1% changed", 0.10))
    sizes = sorted({r.extra["n"] for r in scale if r.contender.startswith("flowsync")})
    if len(sizes) >= 2:
        lo = max(
            r.rss_mb
            for r in scale
            if r.extra["n"] == sizes[0] and r.contender.startswith("flowsync")
        )
        hi = max(
            r.rss_mb
            for r in scale
            if r.extra["n"] == sizes[-1] and r.contender.startswith("flowsync")
        )
        out.append(
            (
                f"peak RSS flat in N (RSS at {sizes[-1]:,} <= 1.3x RSS at {sizes[0]:,})",
                f"{lo:.0f} MB -> {hi:.0f} MB ({hi / lo:.2f}x)",
                hi <= 1.3 * lo,
            )
        )
    return out


def scale_table(scale: list[Run]) -> str:
    head = (
        "| N | contender | runs | wall s (median) | own s | rows/s (wall) | peak RSS MB | rows == /count |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for n in sorted({r.extra["n"] for r in scale}):
        for name in ("floor (httpx loop)", "flowsync full c=2"):
            mine = [r for r in scale if r.extra["n"] == n and r.contender == name]
            if not mine:
                continue
            wall = med([r.wall for r in mine])
            own = med([r.seconds for r in mine if r.seconds is not None])
            ok = "ok" if all(r.ok for r in mine) else "MISMATCH"
            lines.append(
                f"| {n:,} | {name} | {len(mine)} | {wall:.2f} | {fmt(own)} | {n / wall:,.0f} "
                f"| {max(r.rss_mb for r in mine):.0f} | {ok} |"
            )
    return head + "\n".join(lines) + "\n"


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    rows: list[dict[str, Any]],
    scale: list[Run],
    extra: dict[str, Any],
    command: str,
) -> str:
    parts = [
        f"# Pull benchmark results ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `{command}`\n",
        f"Machine: {info['cores']} cores, {info['memory']} RAM, {info['cpu']}; Python {info['python']}; "
        f"Prefect {info['prefect']} (SQLite-backed server on 127.0.0.1); load average at the end: {info['load']}.\n",
        f"N = {args.runs:,} flow runs; {args.repeat} interleaved repetitions; medians; peak RSS is the max over runs. "
        "'x floor speed' and the target ratios are paired: the ratio within each repetition (same server load), "
        "then the median over repetitions. 'own s' is the contender's in-process time (after interpreter start "
        "and imports); wall is the whole process.\n",
        "## Contenders\n",
        table(rows),
        "\nRequests: counted in one untimed pass through bench/contenders/count_proxy.py "
        "(flowsync's own `--json` count in brackets when it differs).\n",
        f"1%-changed checks (runs changed / changed runs with the new state in the file): {extra.get('changes')}\n",
        "## Targets\n",
        "| target | measured | met |\n|---|---|---|\n"
        + "\n".join(
            f"| {t} | {m} | {'met' if ok else 'NOT met'} |" for t, m, ok in targets(rows, scale)
        )
        + "\n",
    ]
    if scale:
        parts += ["## Scaling (full pull, peak RSS)\n", scale_table(scale)]
    if extra.get("profile"):
        parts += [
            "## cProfile of one full pull (untimed, cumulative)\n",
            "```\n" + extra["profile"][:12000] + "\n```\n",
        ]
    parts += [
        "## Every run (wall seconds, in order)\n",
        "\n".join(
            f"- {r['contender']}: {', '.join(f'{w:.2f}' for w in r['walls'])}; details {r['extra']}"
            for r in rows
        )
        + "\n",
    ]
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--concurrency", default="1,2,3", help="full-pull --concurrency values to compare"
    )
    p.add_argument(
        "--scale", default="", help="sizes for the peak-RSS scaling check, e.g. 10000,100000"
    )
    p.add_argument("--scale-repeat", type=int, default=2)
    p.add_argument(
        "--skip-count-pass", action="store_true", help="do not count requests through the proxy"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "pull.md")
    p.add_argument("--from-raw", type=Path, help="only rewrite the report from a saved pull.raw")
    args = p.parse_args()
    if args.from_raw:
        saved = json.loads(args.from_raw.read_text())
        for k in ("runs", "repeat"):
            setattr(args, k, saved["args"][k])
        runs = [Run(**r) for r in saved["runs"]]
        scale = [Run(**r) for r in saved["scale"]]
        text = report(
            args,
            saved["machine"],
            summarise(runs, saved["requests"]),
            scale,
            saved["extra"],
            saved.get("command")
            or "python -m bench.bench_pull --runs {runs} --repeat {repeat} "
            "--scale {scale} --scale-repeat {scale_repeat}".format(**saved["args"]),
        )
        args.out.write_text(text)
        print(text)
        return
    command = "python -m bench.bench_pull " + " ".join(sys.argv[1:])
    ensure_venvs()
    scratch = WORK / "bench-pull"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    seeded = fast_seed(args.runs, log=log)
    log(
        f"server home {seeded.home} ({'reused' if seeded.reused else 'seeded'} in {seeded.seconds:.0f}s)"
    )
    with prefect_server(home=seeded.home) as server:
        b = Bench(server, args.runs, scratch)
        requests = {} if args.skip_count_pass else count_requests(b, scratch)
        log(f"requests per contender: {requests}")
        extra = main_runs(
            b, args.repeat, [int(c) for c in args.concurrency.split(",") if c], scratch
        )
        runs = b.runs
    scale = scale_runs([int(s) for s in args.scale.split(",") if s], args.scale_repeat, scratch)
    info = machine()
    rows = summarise(runs, requests)
    text = report(args, info, rows, scale, extra, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = args.out.with_suffix(".raw")
    raw.write_text(
        json.dumps(
            {
                "command": command,
                "machine": info,
                "args": vars(args) | {"out": str(args.out)},
                "requests": requests,
                "runs": [asdict(r) for r in runs],
                "scale": [asdict(r) for r in scale],
                "extra": extra,
            },
            indent=1,
            default=str,
        )
    )
    print(text)


if __name__ == "__main__":
    main()
