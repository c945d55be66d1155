"""Seed a PostgreSQL-backed Prefect server with up to millions of flow runs, fast.

The API seeder creates a few hundred runs a second at best; a million would
take hours. This seeds a small template through the API (so the work pool,
flows, deployments, state rows and JSON shapes are the server's own), stops
the server and replicates flow runs in SQL (``INSERT ... SELECT`` over
``generate_series``) into its database: new UUIDs, expected start times spread
over ``days`` (some scheduled runs in the future), the state mix of
``harness.seed.STATE_MIX``, a consistent state history per run
(SCHEDULED, then PENDING/RUNNING/final with start, end and run time; the run's
``state_id`` is its last state row), a new idempotency key and name each.
The secondary indexes are dropped for the load and rebuilt after it (the usual
bulk-load recipe; ten times faster than maintaining 26 indexes row by row),
then both tables are analysed. It then starts the server again and checks
through the API that ``/flow_runs/count`` equals the total, the per-state
counts equal the planned mix, and sampled runs read by id carry the state
history their row points at (a full offset read, as ``harness.fast_seed`` does
for SQLite, costs O(n^2) at a million runs; the benchmark's full pull reads
every run anyway and is checked against the count).

The cluster lives in ``bench/.work/pg-<runs>/`` (kept between runs, reused
when its marker matches); ``pg_server`` starts a server on it with 1 or 2 API
workers. Benchmarks only; nothing in ``src/`` imports this.

    python -m harness.pg_seed --runs 1000000
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from typing_extensions import Unpack

from harness.fast_seed import WORK, Seeded, SeedShape, seed_main, seed_once
from harness.postgres import PgCluster, postgres_cluster
from harness.seed import STATE_MIX
from harness.server import Server, postgres_server, prefect_server

MARKER = "pg_seed.json"
DATABASE = "prefect"
STARTED = ("COMPLETED", "FAILED", "CRASHED", "RUNNING", "PAUSED")
ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass
class PgSeeded(Seeded):
    root: Path  # a PostgreSQL cluster's folder


def default_root(runs: int) -> Path:
    return WORK / f"pg-{runs}"


def _state_case() -> tuple[str, str]:
    """SQL CASE expressions picking (type, name) from the uniform ``r_state`` by STATE_MIX weights."""
    total = sum(w for _, _, w in STATE_MIX)
    acc = 0.0
    types, names = [], []
    for state_type, state_name, w in STATE_MIX[:-1]:
        acc += w / total
        types.append(f"WHEN r_state < {acc:.6f} THEN '{state_type}'")
        names.append(f"WHEN r_state < {acc:.6f} THEN '{state_name}'")
    last_type, last_name, _ = STATE_MIX[-1]
    return (
        f"CASE {' '.join(types)} ELSE '{last_type}' END",
        f"CASE {' '.join(names)} ELSE '{last_name}' END",
    )


def replicate_sql(todo: int, days: int, seed_value: int, offset: int = 0) -> str:
    """The SQL that adds ``todo`` runs (and their states) to a Prefect database."""
    type_case, name_case = _state_case()
    started = ", ".join(f"'{s}'" for s in STARTED)
    ended = ", ".join(f"'{s}'" for s in ENDED)
    return f"""
SET client_min_messages = warning;
SET session_replication_role = replica;  -- the run and its last state point at each other
SELECT setseed({(seed_value % 1000) / 1000.0});
DROP TABLE IF EXISTS seed_plan;
CREATE UNLOGGED TABLE seed_plan AS
WITH tpl AS (SELECT id AS tpl_id, (row_number() OVER (ORDER BY id)) - 1 AS k, count(*) OVER () AS n FROM seed_template),
g AS (
  SELECT i, random() AS r_state, random() AS r_when, random() AS r_up, random() AS r_a, random() AS r_b,
         random() AS r_c, greatest(random(), 1e-12) AS r_d, random() AS r_e
  FROM generate_series(1, {todo}) AS i
),
typed AS (
  SELECT g.*, {type_case} AS st, {name_case} AS sn, now() AS t0 FROM g
),
timed AS (
  SELECT t.*,
    CASE WHEN st = 'SCHEDULED' AND r_up < 0.4
         THEN t0 + make_interval(secs => 60 + r_when * (7 * 86400 - 60))
         ELSE t0 - make_interval(secs => r_when * {days} * 86400) END AS expected,
    (st IN ({started}) OR (st = 'CANCELLED' AND r_b < 0.5)) AS has_start
  FROM typed t
),
planned AS (
  SELECT gen_random_uuid() AS id, tpl.tpl_id, timed.*,
    least(expected, t0) - make_interval(secs => 60 + r_a * 3540) AS created_at,
    CASE WHEN has_start THEN expected + make_interval(secs => 0.5 + r_c * 29.5) END AS start_at,
    least(exp(4.0 + 1.2 * sqrt(-2 * ln(r_d)) * cos(2 * pi() * r_e)), 6 * 3600) AS run_seconds
  FROM timed JOIN tpl ON tpl.k = timed.i % tpl.n
)
SELECT p.*,
  gen_random_uuid() AS sched_sid, gen_random_uuid() AS pend_sid, gen_random_uuid() AS run_sid,
  gen_random_uuid() AS final_sid,
  CASE WHEN has_start THEN start_at - make_interval(secs => 0.1 + r_a * 4.9)
       WHEN st = 'PENDING' THEN expected + make_interval(secs => 0.1 + r_a * 4.9) END AS pend_at,
  CASE WHEN has_start AND st IN ({ended}) THEN start_at + make_interval(secs => run_seconds)
       WHEN NOT has_start AND st = 'CANCELLED' THEN expected + make_interval(secs => 0.1 + r_b * 4.9) END AS end_at,
  CASE WHEN st = 'PAUSED' THEN start_at + make_interval(secs => 1 + r_b * 599) END AS paused_at
FROM planned p;

ALTER TABLE seed_plan ADD COLUMN last_sid uuid, ADD COLUMN last_at timestamptz;
UPDATE seed_plan SET
  last_sid = CASE WHEN end_at IS NOT NULL OR paused_at IS NOT NULL THEN final_sid
                  WHEN has_start THEN run_sid WHEN pend_at IS NOT NULL THEN pend_sid ELSE sched_sid END,
  last_at = coalesce(end_at, paused_at, CASE WHEN has_start THEN start_at END, pend_at, created_at);

INSERT INTO flow_run_state (id, created, updated, type, timestamp, name, state_details, flow_run_id)
SELECT sched_sid, created_at, created_at, 'SCHEDULED'::state_type, created_at, 'Scheduled',
       jsonb_build_object('flow_run_id', id, 'scheduled_time', to_char(expected AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                          'deferred', false, 'untrackable_result', false, 'pause_reschedule', false), id
FROM seed_plan
UNION ALL
SELECT pend_sid, pend_at, pend_at, 'PENDING'::state_type, pend_at, 'Pending',
       jsonb_build_object('flow_run_id', id, 'deferred', false, 'untrackable_result', false, 'pause_reschedule', false), id
FROM seed_plan WHERE pend_at IS NOT NULL
UNION ALL
SELECT run_sid, start_at, start_at, 'RUNNING'::state_type, start_at, 'Running',
       jsonb_build_object('flow_run_id', id, 'deferred', false, 'untrackable_result', false, 'pause_reschedule', false), id
FROM seed_plan WHERE has_start
UNION ALL
SELECT final_sid, coalesce(end_at, paused_at), coalesce(end_at, paused_at), st::state_type, coalesce(end_at, paused_at), sn,
       jsonb_build_object('flow_run_id', id, 'deferred', false, 'untrackable_result', false, 'pause_reschedule', false), id
FROM seed_plan WHERE end_at IS NOT NULL OR paused_at IS NOT NULL;

INSERT INTO flow_run (
  id, created, updated, name, state_type, run_count, expected_start_time, next_scheduled_start_time,
  start_time, end_time, total_run_time, flow_version, parameters, idempotency_key, context, empirical_policy,
  tags, auto_scheduled, flow_id, deployment_id, parent_task_run_id, state_id, state_name,
  infrastructure_document_id, work_queue_name, state_timestamp, created_by, infrastructure_pid, work_queue_id,
  job_variables, deployment_version, labels)
SELECT p.id, p.created_at, p.last_at,
  (ARRAY['amber','brisk','calm','dapper','eager','fuzzy','gentle','hasty','icy','jolly'])[1 + floor(p.r_a * 10)::int]
    || '-' || (ARRAY['ant','bison','crane','dingo','egret','ferret','gecko','heron','ibis','jackal'])[1 + floor(p.r_c * 10)::int]
    || '-' || (p.i + {offset}),
  p.st::state_type, CASE WHEN p.has_start THEN 1 ELSE 0 END, p.expected,
  CASE WHEN p.st = 'SCHEDULED' THEN p.expected END,
  p.start_at, p.end_at,
  CASE WHEN p.end_at IS NOT NULL AND p.has_start THEN make_interval(secs => p.run_seconds) ELSE interval '0' END,
  t.flow_version, t.parameters || jsonb_build_object('n', 1 + floor(p.r_b * 100)::int), gen_random_uuid()::text,
  t.context, t.empirical_policy, t.tags, t.auto_scheduled, t.flow_id, t.deployment_id, NULL, p.last_sid,
  CASE WHEN p.last_sid = p.final_sid THEN p.sn WHEN p.last_sid = p.run_sid THEN 'Running'
       WHEN p.last_sid = p.pend_sid THEN 'Pending' ELSE 'Scheduled' END,
  t.infrastructure_document_id, t.work_queue_name, p.last_at, t.created_by, NULL, t.work_queue_id,
  t.job_variables, t.deployment_version, t.labels
FROM seed_plan p JOIN flow_run t ON t.id = p.tpl_id;
DROP TABLE seed_plan;
SET session_replication_role = DEFAULT;
"""


def _secondary_indexes(cluster: PgCluster) -> list[tuple[str, str]]:
    """(name, CREATE statement) of the indexes on flow_run/flow_run_state that back no constraint."""
    out = cluster.psql(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "WHERE i.tablename IN ('flow_run', 'flow_run_state') AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname) ORDER BY 1",
        DATABASE,
    )
    return [tuple(line.split("|", 1)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def replicate(cluster: PgCluster, total: int, days: int, seed_value: int, log: Any = print) -> int:
    have = int(cluster.psql("SELECT count(*) FROM flow_run", DATABASE).strip())
    todo = total - have
    if todo <= 0:
        return 0
    indexes = _secondary_indexes(cluster)
    t = time.monotonic()
    cluster.psql(
        "CREATE TABLE IF NOT EXISTS seed_template AS SELECT id FROM flow_run;\n"
        + "".join(f'DROP INDEX IF EXISTS "{name}";\n' for name, _ in indexes),
        DATABASE,
    )
    for start in range(0, todo, 250_000):  # chunks keep the plan table and WAL bounded
        n = min(250_000, todo - start)
        cluster.psql(replicate_sql(n, days, seed_value + start, offset=start), DATABASE)
        log(f"  +{n} runs ({start + n}/{todo}, {time.monotonic() - t:.0f}s)")
    t = time.monotonic()
    cluster.psql(
        "SET maintenance_work_mem = '512MB';\n" + "".join(f"{ddl};\n" for _, ddl in indexes),
        DATABASE,
    )
    cluster.psql(
        "DROP TABLE seed_template; VACUUM ANALYZE flow_run; VACUUM ANALYZE flow_run_state;",
        DATABASE,
    )
    log(f"  rebuilt {len(indexes)} indexes and analysed in {time.monotonic() - t:.0f}s")
    return todo


def verify(url: str, expected: int, samples: int = 50, timeout: float = 300) -> dict[str, Any]:
    """The server's count, per-state counts, and sampled runs' state rows must be consistent."""
    rng = random.Random(expected)
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=timeout) as c:
        count = int(c.post("flow_runs/count", json={}).json())
        by_state = {
            st: int(
                c.post(
                    "flow_runs/count", json={"flow_runs": {"state": {"type": {"any_": [st]}}}}
                ).json()
            )
            for st, _, _ in STATE_MIX
        }
        bad = []
        for _ in range(samples):
            page = c.post(
                "flow_runs/filter",
                json={
                    "sort": "EXPECTED_START_TIME_ASC",
                    "limit": 1,
                    "flow_runs": {
                        "expected_start_time": {
                            "after_": datetime.fromtimestamp(
                                time.time() - rng.uniform(0, 80 * 86400), timezone.utc
                            ).isoformat()
                        }
                    },
                },
            ).json()
            if not page:
                continue
            run = c.get(f"flow_runs/{page[0]['id']}").json()
            states = c.get("flow_run_states/", params={"flow_run_id": run["id"]}).json()
            latest = max(states, key=lambda s: s["timestamp"]) if states else None
            if (
                not latest
                or latest["id"] != run["state"]["id"]
                or latest["type"] != run["state_type"]
            ):
                bad.append(run["id"])
    result = {
        "count": count,
        "expected": expected,
        "by_state": by_state,
        "sampled": samples,
        "inconsistent": bad,
    }
    if count != expected or sum(by_state.values()) != expected or bad:
        raise RuntimeError(f"PostgreSQL seed check failed: {result}")
    return result


@contextmanager
def pg_cluster_at(root: Path) -> Iterator[PgCluster]:
    with postgres_cluster(keep_at=root, tuned=True) as cluster:
        yield cluster


@contextmanager
def pg_server(
    cluster: PgCluster, workers: int = 1, home: Path | None = None, *, copy: bool = False
) -> Iterator[Server]:
    """A server on the seeded database: one API worker, or ``workers`` with Redis and a services process.

    ``copy``: on a fresh copy of it, dropped afterwards, for a benchmark that changes runs
    (the kept database stays as seeded for every later one)."""
    backend = "postgres" if workers == 1 else "postgres-2w"
    database = (
        cluster.create_database(f"copy_{os.getpid()}", template=DATABASE) if copy else DATABASE
    )
    try:
        with postgres_server(
            cluster.url(database), workers, home, backend=backend, timeout=300
        ) as server:
            yield server
    finally:
        if copy:
            cluster.drop_database(database)


@dataclass
class _Database:
    """The ``prefect`` database of a PostgreSQL cluster."""

    cluster: PgCluster
    log: Any

    def __str__(self) -> str:
        return f"database {DATABASE!r} on port {self.cluster.port}"

    def template_server(self) -> AbstractContextManager[Server]:
        url = self.cluster.url(DATABASE)
        return prefect_server(database_url=url, backend="postgres", timeout=300)

    def replicate(self, runs: int, days: int, seed_value: int) -> int:
        return replicate(self.cluster, runs, days, seed_value, self.log)

    def server(self) -> AbstractContextManager[Server]:
        return pg_server(self.cluster)

    def verify(self, url: str, runs: int) -> dict[str, Any]:
        return verify(url, runs)


@contextmanager
def _empty_database(root: Path, log: Any) -> Iterator[_Database]:
    with pg_cluster_at(root) as cluster:
        if cluster.has_database(DATABASE):
            cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE, template=None)
        yield _Database(cluster, log)


def pg_fast_seed(runs: int, root: Path | None = None, **shape: Unpack[SeedShape]) -> PgSeeded:
    """A kept PostgreSQL cluster whose ``prefect`` database holds ``runs`` flow runs."""
    where = root or default_root(runs)
    log = shape.get("log", print)
    template, seconds, reused = seed_once(
        where / MARKER, lambda: _empty_database(where, log), runs, **shape
    )
    return PgSeeded(runs, template, seconds, reused, root=where)


def main() -> None:
    seed_main(__doc__, "--root", "default: bench/.work/pg-<runs>", pg_fast_seed)


if __name__ == "__main__":
    main()
