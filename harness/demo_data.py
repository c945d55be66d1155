"""Realistic run history for the demo: schedules, durations, lateness and failures as on a real server.

The API cannot backdate a run's start and end (the server stamps them when the
state changes), so, as ``harness.fast_seed`` does, this creates the work pool,
flows, deployments and one scheduled run per deployment through the API (the
server's own rows and JSON shapes), stops the server, and writes the history
into its SQLite file: runs on each deployment's cadence over the last
``days``, each with a consistent state history (SCHEDULED, PENDING, RUNNING,
final) and start, end and run time. What it looks like:

- durations differ by flow (a dashboard refresh takes ~40 s, model training ~2 h),
  log-normal around each flow's typical time;
- lateness of seconds (a worker picks runs up within a few seconds), with a
  few outliers of minutes when the pool was busy;
- several distinct failure messages, written as Prefect writes them
  (exceptions with ids and numbers, a timeout, a crashed process);
- ``sync-crm/prod`` has failed on every run since yesterday afternoon
  (an expired API token), and recovered failures elsewhere;
- the next run of each deployment scheduled in the future, one running now.

    python -m harness.demo_data --home .demo/prefect     # then start a server on that home
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from harness.fast_seed import STATE_SQL, _fmt, _iso, state_row
from harness.seed import post_json
from harness.server import prefect_server

PREFIX = "Flow run encountered an exception: "


@dataclass(frozen=True)
class Deployment:
    flow: str
    name: str
    every_minutes: int
    offset_minutes: int  # first run of the day at this minute
    typical_s: float  # median duration of a successful run
    spread: float  # log-normal sigma of the duration
    failure_rate: float
    failures: tuple[Callable[[random.Random, datetime], tuple[str, str, str, float]], ...]
    tags: tuple[str, ...] = ()


def _exception(
    text: Callable[[random.Random, datetime], str], share: float = 0.6
) -> Callable[..., Any]:
    return lambda rng, at: (
        "FAILED",
        "Failed",
        PREFIX + text(rng, at),
        share * rng.uniform(0.3, 1.0),
    )


def _timeout(seconds: float) -> Callable[..., Any]:
    return lambda rng, at: (
        "FAILED",
        "TimedOut",
        f"Flow run exceeded timeout of {seconds:.1f} second(s)",
        -seconds,
    )


def _crash(code: int) -> Callable[..., Any]:
    return lambda rng, at: (
        "CRASHED",
        "Crashed",
        f"Flow run process exited with non-zero status code {code}.",
        rng.uniform(0.4, 0.9),
    )


DEPLOYMENTS = [
    Deployment(
        "ingest-orders",
        "prod",
        60,
        5,
        95,
        0.25,
        0.04,
        (
            _exception(
                lambda r, at: f"ValueError: order {r.randint(100000, 999999)} has no customer_id"
            ),
            _exception(
                lambda r, at: (
                    "HTTPStatusError: Server error '503 Service Unavailable' for url "
                    f"'https://api.shop.example.com/v1/orders?page={r.randint(2, 40)}'"
                )
            ),
        ),
        ("etl", "critical"),
    ),
    Deployment(
        "ingest-orders",
        "backfill",
        360,
        20,
        25 * 60,
        0.35,
        0.03,
        (
            _exception(
                lambda r, at: (
                    f"TimeoutError: read of s3://lake-raw/orders/{at:%Y/%m/%d}/part-{r.randint(0, 99):05d}.parquet "
                    "timed out after 120.0 s"
                )
            ),
        ),
        ("etl",),
    ),
    Deployment("refresh-dashboards", "prod", 15, 0, 40, 0.3, 0.012, (_timeout(300),), ("hourly",)),
    Deployment(
        "sync-crm",
        "prod",
        60,
        30,
        4 * 60,
        0.3,
        0.03,
        (_exception(lambda r, at: f"KeyError: 'account_{r.randint(1000, 9999)}'"),),
        ("crm",),
    ),
    Deployment(
        "score-leads",
        "prod",
        30,
        10,
        2 * 60 + 10,
        0.3,
        0.06,
        (
            _exception(
                lambda r, at: (
                    f"ValueError: lead {uuid.UUID(int=r.getrandbits(128), version=4)} has score "
                    f"{r.uniform(1.01, 3.0):.2f}, expected 0..1"
                )
            ),
        ),
        ("ml",),
    ),
    Deployment(
        "train-model",
        "prod",
        1440,
        2 * 60,
        2 * 3600 + 600,
        0.15,
        0.15,
        (
            _exception(
                lambda r, at: (
                    f"MemoryError: Unable to allocate {r.uniform(12, 40):.1f} GiB for an array with shape "
                    f"({r.randint(10**6, 9 * 10**6)}, {r.choice([256, 512, 1024])}) and data type float64"
                )
            ),
            _crash(137),
        ),
        ("ml", "nightly"),
    ),
    Deployment(
        "nightly-backup",
        "prod",
        1440,
        60,
        45 * 60,
        0.2,
        0.08,
        (
            _exception(
                lambda r, at: (
                    "FileNotFoundError: [Errno 2] No such file or directory: "
                    f"'/mnt/backup/{at:%Y-%m-%d}/warehouse.dump'"
                )
            ),
        ),
        ("nightly",),
    ),
]
# sync-crm has failed on every run since yesterday afternoon: its API token expired.
BROKEN = ("sync-crm", "prod")
BROKEN_MESSAGE = (
    PREFIX + "HTTPStatusError: Client error '401 Unauthorized' for url "
    "'https://crm.example.com/api/v2/contacts?updated_since={since}'"
)


def _lateness(rng: random.Random) -> float:
    if rng.random() < 0.03:  # the pool was busy: minutes late
        return rng.uniform(90, 14 * 60)
    return min(rng.lognormvariate(1.3, 0.7), 60.0)


def _create_base(url: str) -> dict[tuple[str, str], str]:
    """Work pool, flows, deployments and one scheduled run each, through the API."""
    ids: dict[tuple[str, str], str] = {}
    now = datetime.now(timezone.utc)
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=60) as c:
        pool = c.post("work_pools/", json={"name": "k8s-prod", "type": "process"})
        if pool.status_code not in (200, 201, 409):
            pool.raise_for_status()
        flows: dict[str, str] = {}
        for d in DEPLOYMENTS:
            if d.flow not in flows:
                flows[d.flow] = post_json(c, "flows/", {"name": d.flow})["id"]
            dep = post_json(
                c,
                "deployments/",
                {
                    "name": d.name,
                    "flow_id": flows[d.flow],
                    "tags": list(d.tags),
                    "work_pool_name": "k8s-prod",
                    "parameters": {},
                },
            )
            ids[(d.flow, d.name)] = dep["id"]
            post_json(
                c,
                f"deployments/{dep['id']}/create_flow_run",
                {
                    "state": {
                        "type": "SCHEDULED",
                        "name": "Scheduled",
                        "state_details": {"scheduled_time": (now + timedelta(hours=1)).isoformat()},
                    },
                },
            )
    return ids


def _history(
    rng: random.Random, d: Deployment, expected: datetime, now: datetime, broken_since: datetime
) -> tuple[list[tuple[str, str, datetime, str | None]], dict[str, Any]]:
    """The states of one run (type, name, time, message), oldest first, and its time fields."""
    created = expected - timedelta(minutes=rng.uniform(30, 90))
    states: list[tuple[str, str, datetime, str | None]] = [
        ("SCHEDULED", "Scheduled", created, None)
    ]
    start = expected + timedelta(seconds=_lateness(rng))
    states.append(("PENDING", "Pending", start - timedelta(seconds=rng.uniform(0.5, 3)), None))
    states.append(("RUNNING", "Running", start, None))
    typical = rng.lognormvariate(0, d.spread) * d.typical_s
    end = start + timedelta(seconds=typical)
    if end > now:  # still running
        return states, {"start": start, "end": None, "seconds": (now - start).total_seconds()}
    if (d.flow, d.name) == BROKEN and expected >= broken_since:
        seconds = rng.uniform(2, 6)
        states.append(
            (
                "FAILED",
                "Failed",
                start + timedelta(seconds=seconds),
                BROKEN_MESSAGE.format(since=_iso(expected - timedelta(hours=1))),
            )
        )
    elif rng.random() < 0.01:
        seconds = rng.uniform(5, 60)
        states.append(("CANCELLING", "Cancelling", start + timedelta(seconds=seconds - 1), None))
        states.append(
            ("CANCELLED", "Cancelled", start + timedelta(seconds=seconds), "Cancelled by a user.")
        )
    elif rng.random() < d.failure_rate:
        state_type, name, message, share = rng.choice(d.failures)(rng, expected)
        seconds = -share if share < 0 else typical * share  # a timeout fails exactly at the limit
        states.append((state_type, name, start + timedelta(seconds=seconds), message))
    else:
        seconds = typical
        states.append(("COMPLETED", "Completed", end, None))
    return states, {"start": start, "end": states[-1][2], "seconds": seconds}


@dataclass(frozen=True)
class DemoRun:
    """One run of the history: its deployment, expected start, states (type, name, time,
    message; oldest first, the last is the current one) and time fields."""

    deployment: Deployment
    expected: datetime
    states: list[tuple[str, str, datetime, str | None]]
    start: datetime
    end: datetime | None  # None: still running
    seconds: float  # total run time


def demo_runs(rng: random.Random, days: int, now: datetime) -> Iterator[DemoRun]:
    """Every deployment's runs on its cadence over the last ``days`` up to ``now``.

    The one generator of the demo's history: ``write_history`` puts it into a stopped
    server's SQLite file, ``harness.built`` into a flowsync file without a server.
    """
    broken_since = (now - timedelta(days=1)).replace(hour=14, minute=0, second=0, microsecond=0)
    for d in DEPLOYMENTS:
        expected = _first_run(d, days, now)
        while expected < now:
            states, times = _history(rng, d, expected, now, broken_since)
            yield DemoRun(d, expected, states, times["start"], times["end"], times["seconds"])
            expected += timedelta(minutes=d.every_minutes)


def _first_run(d: Deployment, days: int, now: datetime) -> datetime:
    day0 = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    return day0 + timedelta(minutes=d.offset_minutes)


def next_run_at(d: Deployment, days: int, now: datetime) -> datetime:
    """The deployment's first slot at or after ``now`` (its next scheduled run)."""
    expected = _first_run(d, days, now)
    while expected < now:
        expected += timedelta(minutes=d.every_minutes)
    return expected


def write_history(
    db: Path,
    ids: dict[tuple[str, str], str],
    days: int,
    seed_value: int = 0,
    now: datetime | None = None,
) -> int:
    """Add ``days`` of runs per deployment to a stopped server's SQLite file; returns how many."""
    rng = random.Random(seed_value)
    now = now or datetime.now(timezone.utc)
    con = sqlite3.connect(db, timeout=60)
    con.row_factory = sqlite3.Row
    added = 0
    try:
        details_row = con.execute("SELECT state_details FROM flow_run_state LIMIT 1").fetchone()
        details_keys: dict[str, Any] = {k: None for k in json.loads(details_row[0])}
        details_keys.update(deferred=False, untrackable_result=False, pause_reschedule=False)
        con.execute(
            "PRAGMA foreign_keys = OFF"
        )  # state_id points at a row inserted in the same batch
        with con:
            templates = {
                d: dict(
                    con.execute(
                        "SELECT * FROM flow_run WHERE deployment_id = ?", [ids[(d.flow, d.name)]]
                    ).fetchone()
                )
                for d in DEPLOYMENTS
            }
            for run in demo_runs(rng, days, now):
                d, expected = run.deployment, run.expected
                dep_id = ids[(d.flow, d.name)]
                template = templates[d]
                columns = list(template)
                run_sql = f"INSERT INTO flow_run ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                state_rows = [
                    state_row(rng, details_keys, run_id, expected, typ, name, at, message)
                    for typ, name, at, message in run.states
                ]
                last = state_rows[-1]
                row = dict(template)
                row.update(
                    id=run_id,
                    created=state_rows[0][1],
                    updated=last[1],
                    idempotency_key=f"scheduled {dep_id} {_iso(expected)}",
                    name=run_name(rng),
                    expected_start_time=_fmt(expected),
                    next_scheduled_start_time=None,
                    start_time=_fmt(run.start),
                    end_time=_fmt(run.end) if run.end else None,
                    total_run_time=_fmt(
                        datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=run.seconds)
                    ),
                    run_count=1,
                    state_id=last[0],
                    state_type=last[3],
                    state_name=last[5],
                    state_timestamp=last[4],
                    auto_scheduled=1,
                )
                con.execute(run_sql, [row[c] for c in columns])
                con.executemany(STATE_SQL, state_rows)
                added += 1
            # each template becomes its deployment's next scheduled run
            for d, template in templates.items():
                at = _fmt(next_run_at(d, days, now))
                con.execute(
                    "UPDATE flow_run SET expected_start_time = ?, next_scheduled_start_time = ? WHERE id = ?",
                    [at, at, template["id"]],
                )
    finally:
        con.close()
    return added


def run_name(rng: random.Random) -> str:
    """A run name as Prefect makes them (adjective-animal)."""
    return (
        f"{rng.choice(['amber', 'brisk', 'calm', 'eager', 'jolly', 'keen', 'proud', 'rapid'])}-"
        f"{rng.choice(['bison', 'crane', 'gecko', 'heron', 'lemur', 'otter', 'panda', 'raven'])}"
    )


def seed_demo(home: Path, days: int = 14, seed_value: int = 0, now: datetime | None = None) -> int:
    """A PREFECT_HOME whose server holds ``days`` of realistic history up to ``now`` (the
    clock's, unless given); returns the runs written."""
    with prefect_server(home=home) as server:
        ids = _create_base(server.url)
    return write_history(home / "prefect.db", ids, days, seed_value, now)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--days", type=int, default=14)
    a = p.parse_args()
    print(f"wrote {seed_demo(a.home, a.days)} runs into {a.home / 'prefect.db'}")


if __name__ == "__main__":
    main()
