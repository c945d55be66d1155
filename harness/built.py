"""A realistic flowsync file built without a server, and the answers a server would give about it.

``build`` writes what a full pull of a server holding the demo's history would leave:
two weeks of runs on each deployment's cadence (``harness.demo_data.demo_runs``:
durations by flow, lateness, distinct failure messages, one deployment failing since
yesterday, runs still running), each deployment's next scheduled run, runs waiting
late (SCHEDULED ``Late`` and PENDING without a start), a paused deployment outside any
work pool with manual runs, the real ``@flow`` shapes of ``harness/real_flows.py``
(a parent and its subflow, a retried run, two timed runs, a flow that always fails,
none with a deployment), and runs deleted on the server since (``deleted_at``). The rows go in as
API objects through the pull's own writer (``upsert_pages``), inside a ``sync_runs``
record, then the views are rebuilt and a snapshot published, as a pull does.

``BuiltHistory.count`` and ``.filter`` answer ``POST /flow_runs/count`` and
``/flow_runs/filter`` over the runs the server would still hold, from the generated
objects in Python, so tests compare the views with an answer that shares no SQL with
them. They refuse a filter they do not know rather than ignore it.
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flowsync import views
from flowsync.store import Store, signatures
from flowsync.store.snapshot import publish
from flowsync.store.sync_log import finish_sync_run, start_sync_run
from flowsync.store.synced_tables import mark_deleted, upsert_pages
from flowsync.store.tables import DEPLOYMENTS as DEPLOYMENT_SPEC
from flowsync.store.tables import FLOW_RUNS as FLOW_RUN_SPEC
from flowsync.store.tables import FLOWS as FLOW_SPEC
from harness.demo_data import DEPLOYMENTS, PREFIX, demo_runs, next_run_at, run_name

API_URL = "http://127.0.0.1:4200/api"  # the server the file says it was pulled from
POOL = "k8s-prod"
DELETED = 6  # finished runs deleted on the server after they were pulled


@dataclass(frozen=True)
class _Page:
    rows: list[dict[str, Any]]
    # Not counted: the builder's objects are ordinary runs, staged in one statement.
    nbytes: int = 0

    @property
    def raw(self) -> str:
        return json.dumps(self.rows)


@dataclass
class BuiltHistory:
    path: Path
    now: datetime
    flows: dict[str, str] = field(default_factory=dict)  # name -> id
    deployments: dict[str, str] = field(default_factory=dict)  # "flow/deployment" -> id
    runs: list[dict[str, Any]] = field(default_factory=list)  # API objects, deleted ones too
    deleted: set[str] = field(default_factory=set)  # run ids gone from the server
    real: dict[str, Any] = field(default_factory=dict)  # as run_real_flows returns them

    def live(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["id"] not in self.deleted]

    def count(self, body: dict[str, Any] | None = None) -> int:
        """``POST /flow_runs/count`` with ``body``, as the server would answer."""
        return len(self._select(body or {}))

    def filter(self, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """``POST /flow_runs/filter`` with ``body`` (``sort`` by expected start, ``limit``)."""
        body = dict(body or {})
        sort = body.pop("sort", None)
        limit = body.pop("limit", None)
        found = self._select(body)
        if sort is not None:
            if sort not in ("EXPECTED_START_TIME_ASC", "EXPECTED_START_TIME_DESC"):
                raise ValueError(f"sort {sort!r} is not modelled")
            found.sort(key=lambda r: r["expected_start_time"], reverse=sort.endswith("DESC"))
        return found[:limit] if limit is not None else found

    def _select(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        matches = _matcher(body, {v: k for k, v in self.flows.items()})
        return [r for r in self.live() if matches(r)]


def _any(spec: dict[str, Any], key: str) -> set[Any]:
    (op, values), *rest = spec[key].items()
    if op != "any_" or rest:
        raise ValueError(f"filter {key}: only any_ is modelled, got {spec[key]}")
    return set(values)


Run = dict[str, Any]


def _matcher(body: dict[str, Any], flow_names: dict[str, str]) -> Callable[[Run], bool]:
    """Prefect's filter semantics for the filters the tests use (bounds are inclusive), as
    one test a run: the body is read once, not once a run."""
    checks: list[Callable[[Run], bool]] = []
    for section, spec in body.items():
        for key, cond in spec.items():
            checks.append(_check(section, key, spec, cond, flow_names))
    return lambda run: all(check(run) for check in checks)


def _check(
    section: str, key: str, spec: dict[str, Any], cond: Any, flow_names: dict[str, str]
) -> Callable[[Run], bool]:
    if section == "flow_runs" and key == "state":
        types = _any(cond, "type")
        return lambda run: run["state_type"] in types
    if section == "flow_runs" and key == "expected_start_time":
        if set(cond) - {"after_", "before_"}:
            raise ValueError(f"expected_start_time: {cond} is not modelled")
        after = _ts(cond["after_"]) if "after_" in cond else None
        before = _ts(cond["before_"]) if "before_" in cond else None
        return lambda run: (
            (after is None or _ts(run["expected_start_time"]) >= after)
            and (before is None or _ts(run["expected_start_time"]) <= before)
        )
    if section == "flow_runs" and key == "tags":
        if set(cond) != {"all_"}:
            raise ValueError(f"tags: {cond} is not modelled")
        tags = set(cond["all_"])
        return lambda run: tags <= set(run["tags"])
    if section == "flow_runs" and key == "start_time":
        if set(cond) != {"is_null_"}:
            raise ValueError(f"start_time: {cond} is not modelled")
        return lambda run: (run["start_time"] is None) == cond["is_null_"]
    if section == "deployments" and key == "id":
        deployments = _any(spec, "id")
        return lambda run: run["deployment_id"] in deployments
    if section == "flows" and key == "id":
        flows = _any(spec, "id")
        return lambda run: run["flow_id"] in flows
    if section == "flows" and key == "name":
        names = _any(spec, "name")
        return lambda run: flow_names[run["flow_id"]] in names
    if section == "work_pools" and key == "name":
        pools = _any(spec, "name")
        return lambda run: run["work_pool_name"] in pools
    raise ValueError(f"filter {section}.{key} is not modelled")


@functools.cache
def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat()


class Builder:
    """API objects (flows, deployments, runs) on their way into a file; ``write`` puts them in."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.real: dict[str, Any] = {}
        self.deleted: set[str] = set()
        self.rng = rng
        self.now = now
        self.flows: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _object(self, name: str, days_old: int, **fields: Any) -> dict[str, Any]:
        at = _iso(self.now - timedelta(days=days_old))
        return {"id": self.uid(), "created": at, "updated": at, "name": name, **fields}

    def flow(self, name: str) -> dict[str, Any]:
        if name not in self.flows:
            self.flows[name] = self._object(name, 90, tags=[], labels={})
        return self.flows[name]

    def deployment(
        self, flow: str, name: str, tags: list[str], pool: str | None, paused: bool = False
    ) -> dict[str, Any]:
        key = f"{flow}/{name}"
        if key not in self.deployments:
            self.deployments[key] = self._object(
                name,
                60,
                flow_id=self.flow(flow)["id"],
                paused=paused,
                status="NOT_READY" if paused else "READY",
                schedules=[],
                parameters={},
                job_variables={},
                tags=tags,
                labels={},
                work_pool_name=pool,
                work_queue_name="default" if pool else None,
                entrypoint=f"flows/{flow.replace('-', '_')}.py:main",
                enforce_parameter_schema=True,
            )
        return self.deployments[key]

    def run(
        self,
        flow: str,
        states: Sequence[tuple[str, str, datetime, str | None]],
        expected: datetime,
        *,
        deployment: dict[str, Any] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        seconds: float = 0.0,
        run_count: int = 1,
        tags: list[str] | None = None,
        parent_task_run_id: str | None = None,
    ) -> dict[str, Any]:
        run_id = self.uid()
        typ, name, at, message = states[-1]
        pool = deployment["work_pool_name"] if deployment else None
        run = {
            "id": run_id,
            "created": _iso(states[0][2]),
            "updated": _iso(at),
            "name": run_name(self.rng),
            "flow_id": self.flow(flow)["id"],
            "deployment_id": deployment["id"] if deployment else None,
            "work_pool_name": pool,
            "work_queue_name": "default" if pool else None,
            "flow_version": "a1b2c3d4",
            "parameters": {},
            "idempotency_key": (
                f"scheduled {deployment['id']} {_iso(expected)}" if deployment else None
            ),
            "context": {},
            "empirical_policy": {"retries": 0, "retry_delay": 0, "pause_keys": []},
            "tags": list(tags if tags is not None else (deployment or {}).get("tags", [])),
            "labels": {"prefect.flow.id": self.flow(flow)["id"]},
            "parent_task_run_id": parent_task_run_id,
            "state_id": self.uid(),
            "state_type": typ,
            "state_name": name,
            "state": {
                "type": typ,
                "name": name,
                "timestamp": _iso(at),
                "message": message,
                "data": None,
                "state_details": {"flow_run_id": run_id, "deferred": False},
            },
            "run_count": run_count,
            "expected_start_time": _iso(expected),
            "next_scheduled_start_time": _iso(expected) if typ == "SCHEDULED" else None,
            "start_time": _iso(start),
            "end_time": _iso(end),
            "total_run_time": seconds,
            "estimated_run_time": seconds,
            "estimated_start_time_delta": 0.0,
            "auto_scheduled": deployment is not None and tags is None,
            "infrastructure_pid": None,
            "created_by": None,
            "job_variables": {},
        }
        self.runs.append(run)
        return run

    def finished(
        self,
        flow: str,
        typ: str,
        seconds: float,
        ago: timedelta,
        message: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        start = self.now - ago
        end = start + timedelta(seconds=seconds)
        states = [
            ("SCHEDULED", "Scheduled", start - timedelta(seconds=2), None),
            ("RUNNING", "Running", start, None),
            (typ, typ.title(), end, message),
        ]
        return self.run(
            flow,
            states,
            start - timedelta(seconds=1),
            start=start,
            end=end,
            seconds=seconds,
            **kwargs,
        )

    def write(self, path: Path) -> BuiltHistory:
        """The file at ``path`` as a full pull of a server holding these objects leaves it
        (``deleted``: runs pulled, then deleted on the server)."""
        with Store.writer(path) as store:
            with store.transaction():
                pull_id = start_sync_run(store, API_URL)
            with store.transaction():
                for spec, rows in (
                    (FLOW_SPEC, list(self.flows.values())),
                    (DEPLOYMENT_SPEC, list(self.deployments.values())),
                    (FLOW_RUN_SPEC, self.runs),
                ):
                    upsert_pages(store, spec, [_Page(rows)], pull_id=pull_id)
                mark_deleted(store, "flow_runs", sorted(self.deleted), self.now)
            views.rebuild(store)
            signatures.record_first_seen(store)  # as a pull does (errors' first_seen)
            with store.transaction():
                finish_sync_run(store, pull_id, status="ok", mode="full", inserted=len(self.runs))
            publish(store, pull_id=pull_id)
        return BuiltHistory(
            path,
            self.now,
            flows={name: f["id"] for name, f in self.flows.items()},
            deployments={key: d["id"] for key, d in self.deployments.items()},
            runs=self.runs,
            deleted=self.deleted,
            real=self.real,
        )


def build(
    path: Path, days: int = 14, seed_value: int = 0, now: datetime | None = None
) -> BuiltHistory:
    """Write the file at ``path`` (see the module docstring); ``now`` defaults to the clock."""
    now = now or datetime.now(timezone.utc)
    rng = random.Random(seed_value)
    b = Builder(rng, now)
    for d in DEPLOYMENTS:
        b.deployment(d.flow, d.name, list(d.tags), POOL)
    for demo in demo_runs(rng, days, now):
        d = demo.deployment
        b.run(
            d.flow,
            demo.states,
            demo.expected,
            deployment=b.deployments[f"{d.flow}/{d.name}"],
            start=demo.start,
            end=demo.end,
            seconds=demo.seconds,
        )
    for d in DEPLOYMENTS:  # the next scheduled run of each deployment
        at = next_run_at(d, days, now)
        b.run(
            d.flow,
            [("SCHEDULED", "Scheduled", at - timedelta(hours=1), None)],
            at,
            deployment=b.deployments[f"{d.flow}/{d.name}"],
        )
    # runs waiting for a worker: a late one and one a worker has just picked up
    for key, typ, name, minutes in (
        ("ingest-orders/prod", "SCHEDULED", "Late", 25),
        ("score-leads/prod", "PENDING", "Pending", 4),
    ):
        dep = b.deployments[key]
        at = now - timedelta(minutes=minutes)
        b.run(
            key.split("/")[0],
            [("SCHEDULED", "Scheduled", at - timedelta(hours=1), None), (typ, name, at, None)],
            at,
            deployment=dep,
        )
    # a paused deployment outside any work pool, run by hand now and then
    adhoc = b.deployment("ingest-orders", "adhoc", ["etl", "manual"], None, paused=True)
    for i, typ in enumerate(("COMPLETED", "FAILED", "CANCELLED", "COMPLETED", "CRASHED")):
        message = {
            "FAILED": PREFIX + "ValueError: order 4242 has no customer_id",
            "CRASHED": "Flow run process exited with non-zero status code 1.",
            "CANCELLED": "Cancelled by a user.",
        }.get(typ)
        b.finished(
            "ingest-orders",
            typ,
            80.0 + i,
            timedelta(days=2 + 2 * i),
            message,
            deployment=adhoc,
            tags=["etl", "manual"],
        )
    # what harness/real_flows.py leaves: no deployment, real durations
    parent = b.finished("real-parent", "COMPLETED", 0.6, timedelta(hours=3))
    child = b.finished(
        "real-child", "COMPLETED", 0.3, timedelta(hours=3), parent_task_run_id=b.uid()
    )
    flaky = b.finished("real-flaky", "COMPLETED", 0.2, timedelta(hours=2, minutes=50), run_count=2)
    sleepy = [
        b.finished("real-sleepy", "COMPLETED", s, timedelta(hours=2, minutes=40 - i))
        for i, s in enumerate((0.5, 1.2))
    ]
    for week in range(1, 7):  # it always fails: run by hand now and then, failing each time
        b.finished(
            "real-broken",
            "FAILED",
            0.1,
            timedelta(weeks=week, hours=3),
            PREFIX + "ValueError: this flow always fails",
        )
    broken = b.finished(
        "real-broken",
        "FAILED",
        0.1,
        timedelta(hours=2, minutes=30),
        PREFIX + "ValueError: this flow always fails",
    )
    b.real = {
        "parent": parent["id"],
        "child": child["id"],
        "flaky": flaky["id"],
        "sleepy": [r["id"] for r in sleepy],
        "broken": broken["id"],
    }
    finished = [r["id"] for r in b.runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
    b.deleted = set(random.Random(seed_value + 1).sample(finished[: len(finished) // 2], DELETED))
    return b.write(path)
