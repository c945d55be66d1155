"""Seed a real Prefect server with many flow runs, fast, for benchmarks.

The API seeder (``harness.seed``) creates about 25 runs/s on the SQLite-backed
server: an hour for 100,000 runs. This module seeds a small template through
the API (so flows, deployments, work pool, state rows and JSON shapes are the
server's own), stops the server, and replicates flow runs straight into its
SQLite file (``$PREFECT_HOME/prefect.db``): new UUIDs, expected start times
spread over ``days`` (some scheduled runs in the future), the state mix of
``harness.seed.STATE_MIX``, a consistent state history per run (SCHEDULED,
then PENDING/RUNNING/final with start, end and run time), and a new
idempotency key and name each. It then starts the server again and checks that
``POST /flow_runs/count`` and a full ``/flow_runs/filter`` read both see every
run.

The seeded home lives under ``bench/.work/`` and is reused when its marker
(``fast_seed.json``) matches the request. For the benchmarks (and one smoke test,
``tests/test_bench_smoke.py``): tests keep using the API seeder, and nothing in
``src/`` imports this.

    python -m harness.fast_seed --runs 20000            # -> bench/.work/prefect-20000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, TypedDict

import httpx
from typing_extensions import Unpack

from harness.seed import STATE_MIX, seed
from harness.server import Server, prefect_server

WORK = Path(__file__).resolve().parents[1] / "bench" / ".work"  # the benchmarks' cache (gitignored)
MARKER = "fast_seed.json"
TS = "%Y-%m-%d %H:%M:%S.%f"  # how the server's SQLite file stores DATETIME (naive UTC)
ADJECTIVES = [
    "amber",
    "brisk",
    "calm",
    "dapper",
    "eager",
    "fuzzy",
    "gentle",
    "hasty",
    "icy",
    "jolly",
    "keen",
    "lively",
    "mellow",
    "nimble",
    "olive",
    "proud",
    "quiet",
    "rapid",
    "silver",
    "tidy",
]
ANIMALS = [
    "ant",
    "bison",
    "crane",
    "dingo",
    "egret",
    "ferret",
    "gecko",
    "heron",
    "ibis",
    "jackal",
    "koala",
    "lemur",
    "marten",
    "newt",
    "otter",
    "panda",
    "quail",
    "raven",
    "stoat",
    "tapir",
]
STARTED = {"COMPLETED", "FAILED", "CRASHED", "RUNNING", "PAUSED"}
ENDED = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Seeded:
    """What a fast seed holds (``seed_once``'s answer): its runs, the template's, the
    seconds it took, whether an earlier seed was reused."""

    runs: int
    template_runs: int
    seconds: float
    reused: bool


@dataclass
class FastSeeded(Seeded):
    home: Path  # a PREFECT_HOME


def default_home(runs: int) -> Path:
    return WORK / f"prefect-{runs}"


def _fmt(t: datetime) -> str:
    return t.astimezone(timezone.utc).replace(tzinfo=None).strftime(TS)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


STATE_SQL = (
    "INSERT INTO flow_run_state (id, created, updated, type, timestamp, name, message, "
    "state_details, data, flow_run_id, result_artifact_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def state_row(
    rng: random.Random,
    details_keys: dict[str, Any],
    run_id: str,
    expected: datetime,
    typ: str,
    name: str,
    at: datetime,
    message: str | None = None,
) -> tuple[Any, ...]:
    """One flow_run_state row (the order of STATE_SQL); draws the state's id from ``rng``."""
    details = dict(
        details_keys,
        flow_run_id=run_id,
        scheduled_time=_iso(expected) if typ == "SCHEDULED" else None,
    )
    ts = _fmt(at)
    return (
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        ts,
        ts,
        typ,
        ts,
        name,
        message,
        json.dumps(details),
        None,
        run_id,
        None,
    )


def _state_rows(
    rng: random.Random,
    run_id: str,
    final: tuple[str, str],
    created: datetime,
    expected: datetime,
    details_keys: dict[str, Any],
) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """The state history of one run, oldest first, and the run's time fields."""
    state_type, state_name = final
    history: list[tuple[str, str, datetime]] = [("SCHEDULED", "Scheduled", created)]
    start = end = None
    run_seconds = 0.0
    if state_type in STARTED or (state_type == "CANCELLED" and rng.random() < 0.5):
        start = expected + timedelta(seconds=rng.uniform(0.5, 30))
        history.append(("PENDING", "Pending", start - timedelta(seconds=rng.uniform(0.1, 5))))
        history.append(("RUNNING", "Running", start))
        if state_type in ENDED:
            run_seconds = min(rng.lognormvariate(4.0, 1.2), 6 * 3600)
            end = start + timedelta(seconds=run_seconds)
            history.append((state_type, state_name, end))
        elif state_type == "PAUSED":
            history.append((state_type, state_name, start + timedelta(seconds=rng.uniform(1, 600))))
    elif state_type == "PENDING":
        history.append((state_type, state_name, expected + timedelta(seconds=rng.uniform(0.1, 5))))
    elif state_type == "CANCELLED":
        end = expected + timedelta(seconds=rng.uniform(0.1, 5))
        history.append((state_type, state_name, end))
    rows = [
        state_row(rng, details_keys, run_id, expected, typ, name, at) for typ, name, at in history
    ]
    last = rows[-1]
    times = {
        "start_time": _fmt(start) if start else None,
        "end_time": _fmt(end) if end else None,
        "total_run_time": _fmt(
            datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=run_seconds)
        ),
        "run_count": 1 if start else 0,
        "state_id": last[0],
        "state_type": last[3],
        "state_name": last[5],
        "state_timestamp": last[4],
        "updated": last[4],
        "next_scheduled_start_time": _fmt(expected) if state_type == "SCHEDULED" else None,
    }
    return rows, times


def replicate(
    db: Path, total: int, days: int = 90, seed_value: int = 0, now: datetime | None = None
) -> int:
    """Add flow runs to a stopped server's SQLite file until it holds ``total``; returns how many were added."""
    rng = random.Random(seed_value + 1)
    now = now or datetime.now(timezone.utc)
    con = sqlite3.connect(db, timeout=60)
    con.row_factory = sqlite3.Row
    try:
        have = con.execute("SELECT count(*) FROM flow_run").fetchone()[0]
        todo = total - have
        if todo <= 0:
            return 0
        templates = [dict(r) for r in con.execute("SELECT * FROM flow_run")]
        columns = list(templates[0])
        details_row = con.execute("SELECT state_details FROM flow_run_state LIMIT 1").fetchone()
        details_keys: dict[str, Any] = (
            {k: None for k in json.loads(details_row[0])} if details_row else {}
        )
        details_keys.update(deferred=False, untrackable_result=False, pause_reschedule=False)
        weights = [w for _, _, w in STATE_MIX]
        run_sql = (
            f"INSERT INTO flow_run ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        con.execute(
            "PRAGMA foreign_keys = OFF"
        )  # state_id points at a row inserted in the same batch
        batch_runs: list[tuple[Any, ...]] = []
        batch_states: list[tuple[Any, ...]] = []

        def flush() -> None:
            con.executemany(run_sql, batch_runs)
            con.executemany(STATE_SQL, batch_states)
            batch_runs.clear()
            batch_states.clear()

        with con:
            for _ in range(todo):
                template = rng.choice(templates)
                state_type, state_name, _w = rng.choices(STATE_MIX, weights)[0]
                expected = now - timedelta(seconds=rng.uniform(0, days * 86400))
                if state_type == "SCHEDULED" and rng.random() < 0.4:
                    expected = now + timedelta(seconds=rng.uniform(60, 7 * 86400))  # upcoming runs
                created = min(expected, now) - timedelta(seconds=rng.uniform(60, 3600))
                run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                states, times = _state_rows(
                    rng, run_id, (state_type, state_name), created, expected, details_keys
                )
                row = dict(template)
                row.update(times)
                row.update(
                    id=run_id,
                    created=_fmt(created),
                    name=f"{rng.choice(ADJECTIVES)}-{rng.choice(ANIMALS)}-{rng.randrange(10_000)}",
                    expected_start_time=_fmt(expected),
                    idempotency_key=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    parameters=json.dumps(
                        {**json.loads(template["parameters"] or "{}"), "n": rng.randint(1, 100)}
                    ),
                )
                batch_runs.append(tuple(row[c] for c in columns))
                batch_states.extend(states)
                if len(batch_runs) >= 5000:
                    flush()
            flush()
        return int(todo)
    finally:
        con.close()


def verify(url: str, expected: int, timeout: float = 120) -> dict[str, Any]:
    """The server's count and a full offset read of /flow_runs/filter must both equal ``expected``."""
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=timeout) as c:
        count = c.post("flow_runs/count", json={})
        count.raise_for_status()
        ids: set[str] = set()
        offset = pages = 0
        while True:
            r = c.post("flow_runs/filter", json={"sort": "ID_DESC", "limit": 200, "offset": offset})
            r.raise_for_status()
            page = r.json()
            pages += 1
            ids.update(o["id"] for o in page)
            if len(page) < 200:
                break
            offset += len(page)
    result = {"count": int(count.json()), "read": len(ids), "pages": pages, "expected": expected}
    if result["count"] != expected or result["read"] != expected:
        raise RuntimeError(f"fast seed check failed: {result}")
    return result


def seed_spec(runs: int, template_runs: int, days: int, seed_value: int) -> dict[str, Any]:
    return {
        "runs": runs,
        "template_runs": template_runs,
        "days": days,
        "seed": seed_value,
        "version": 1,
    }


def seeded_before(marker: Path, want: dict[str, Any]) -> bool:
    """Whether ``marker`` records a seed made the way ``want`` describes."""
    return marker.exists() and json.loads(marker.read_text()).get("seed_spec") == want


def write_marker(marker: Path, want: dict[str, Any], checked: dict[str, Any]) -> None:
    marker.write_text(
        json.dumps(
            {
                "seed_spec": want,
                "check": checked,
                "seeded_at": datetime.now(timezone.utc).isoformat(),
            }
        )
    )


def seed_main(doc: str | None, place: str, place_help: str, seeder: Callable[..., Seeded]) -> None:
    """The command line of a seeding script: --runs, ``place`` (a folder: ``--home``, ``--root``)
    and the seed's shape, given to ``seeder``; then one line on where the seed is (the
    attribute of ``seeder``'s result named like ``place``) and how long it took."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, required=True)
    p.add_argument(place, type=Path, default=None, help=place_help)
    p.add_argument("--template-runs", type=int, default=400)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    name = place.removeprefix("--")
    shape: SeedShape = {"template_runs": a.template_runs, "days": a.days, "seed_value": a.seed}
    s = seeder(a.runs, getattr(a, name), **shape)
    where = getattr(s, name)
    print(f"{'reused' if s.reused else 'seeded'} {s.runs} runs in {where} ({s.seconds:.1f}s)")


class SeedPlace(Protocol):
    """Where a fast seed goes (a PREFECT_HOME's SQLite file, a PostgreSQL database), empty."""

    def template_server(self) -> AbstractContextManager[Server]: ...
    def replicate(self, runs: int, days: int, seed_value: int) -> int: ...
    def server(self) -> AbstractContextManager[Server]: ...
    def verify(self, url: str, runs: int) -> dict[str, Any]: ...


class SeedShape(TypedDict, total=False):
    """How a fast seed is made, besides its size (``seed_once``'s defaults)."""

    template_runs: int  # runs seeded through the API, then replicated
    days: int  # expected start times spread over this many days
    seed_value: int
    check: bool  # read every run back through the API after seeding
    log: Callable[[str], object]


def seed_once(
    marker: Path,
    place: Callable[[], AbstractContextManager[SeedPlace]],
    runs: int,
    *,
    template_runs: int = 400,
    days: int = 90,
    seed_value: int = 0,
    check: bool = True,
    log: Callable[[str], object] = print,
) -> tuple[int, float, bool]:
    """Seed ``place`` unless ``marker`` records the same seed: a template of runs through the
    API, replicated to ``runs`` in the database, checked through the API.

    Returns the template's runs, the seconds it took and whether the seed was reused.
    """
    began = time.monotonic()
    want = seed_spec(runs, min(template_runs, runs), days, seed_value)
    if seeded_before(marker, want):
        return want["template_runs"], time.monotonic() - began, True
    with place() as where:
        log(f"seeding a template of {want['template_runs']} runs through the API into {where}")
        with where.template_server() as server:
            seed(server.url, runs=want["template_runs"], days=days, seed_value=seed_value)
        log(f"replicating to {runs} runs in {where}")
        t = time.monotonic()
        added = where.replicate(runs, days, seed_value)
        log(f"added {added} runs in {time.monotonic() - t:.1f}s")
        checked: dict[str, Any] = {}
        if check:
            with where.server() as server:
                checked = where.verify(server.url, runs)
            log(f"server check: {checked}")
    write_marker(marker, want, checked)
    return want["template_runs"], time.monotonic() - began, False


@dataclass
class _Home:
    """A PREFECT_HOME whose server keeps its runs in ``prefect.db`` (SQLite)."""

    home: Path

    def __str__(self) -> str:
        return str(self.home / "prefect.db")

    def template_server(self) -> AbstractContextManager[Server]:
        return prefect_server(home=self.home)

    def replicate(self, runs: int, days: int, seed_value: int) -> int:
        return replicate(self.home / "prefect.db", runs, days=days, seed_value=seed_value)

    server = template_server

    def verify(self, url: str, runs: int) -> dict[str, Any]:
        return verify(url, runs)


@contextmanager
def _empty_home(home: Path) -> Iterator[_Home]:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    yield _Home(home)


def fast_seed(runs: int, home: Path | None = None, **shape: Unpack[SeedShape]) -> FastSeeded:
    """A PREFECT_HOME whose server holds ``runs`` flow runs (reused if already seeded the same way)."""
    where = home or default_home(runs)
    template, seconds, reused = seed_once(where / MARKER, lambda: _empty_home(where), runs, **shape)
    return FastSeeded(runs, template, seconds, reused, home=where)


def main() -> None:
    seed_main(__doc__, "--home", "default: bench/.work/prefect-<runs>", fast_seed)


if __name__ == "__main__":
    main()
