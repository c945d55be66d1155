"""Seed a real Prefect server with realistic flows, deployments and flow runs.

Used by the tests, the demo and the benchmarks. Everything goes through the
REST API: a work pool, flows, deployments (some paused, tagged, in pools), and
flow runs created in bulk with ``POST /deployments/{id}/create_flow_run/bulk``
as SCHEDULED at a time spread over the past ``days`` (so expected start times
span history), then moved to their final state with ``bulk_set_state`` to a
realistic mix. ``run_real_flows`` adds real ``@flow`` executions (durations,
retries, a subflow, a failure) in a subprocess.

    python -m harness.seed --url http://127.0.0.1:4200/api --runs 20000
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

STATE_MIX: list[tuple[str, str, float]] = [
    ("COMPLETED", "Completed", 0.62),
    ("FAILED", "Failed", 0.12),
    ("CRASHED", "Crashed", 0.03),
    ("CANCELLED", "Cancelled", 0.05),
    ("SCHEDULED", "Scheduled", 0.10),
    ("RUNNING", "Running", 0.04),
    ("PENDING", "Pending", 0.03),
    ("PAUSED", "Paused", 0.01),
]
TAGS = ["etl", "ml", "nightly", "hourly", "critical", "finance", "keep"]
FLOW_NAMES = [
    "ingest-orders",
    "train-model",
    "refresh-dashboards",
    "sync-crm",
    "nightly-backup",
    "score-leads",
    "export-ledger",
    "clean-lake",
]


@dataclass
class Seeded:
    flows: dict[str, str] = field(default_factory=dict)  # name -> id
    deployments: dict[str, str] = field(default_factory=dict)  # "flow/deployment" -> id
    runs: dict[str, str] = field(default_factory=dict)  # run id -> final state type


def post_json(c: httpx.Client, path: str, body: Any, tries: int = 8) -> Any:
    """POST and decode, retrying what a busy SQLite server answers (5xx, dropped connections)."""
    for attempt in range(tries):
        try:
            r = c.post(path, json=body)
        except httpx.TransportError:
            time.sleep(0.2 * (attempt + 1))
            continue
        if r.status_code in (500, 502, 503, 504):
            time.sleep(0.2 * (attempt + 1))
            continue
        r.raise_for_status()
        return r.json() if r.content else None
    raise RuntimeError(f"POST {path} kept failing")


def ensure_base(
    c: httpx.Client, flows: int, deployments_per_flow: int, rng: random.Random
) -> Seeded:
    out = Seeded()
    pool = c.post("work_pools/", json={"name": "seed-pool", "type": "process"})
    if pool.status_code not in (200, 201, 409):
        pool.raise_for_status()
    for i in range(flows):
        name = FLOW_NAMES[i % len(FLOW_NAMES)] + ("" if i < len(FLOW_NAMES) else f"-{i}")
        f = post_json(c, "flows/", {"name": name, "tags": rng.sample(TAGS[:-1], 1)})
        out.flows[name] = f["id"]
        for j in range(deployments_per_flow):
            dname = ["prod", "staging", "backfill", "adhoc"][j % 4] + ("" if j < 4 else f"-{j}")
            d = post_json(
                c,
                "deployments/",
                {
                    "name": dname,
                    "flow_id": f["id"],
                    "tags": sorted(set(rng.sample(TAGS, 2))),
                    "work_pool_name": "seed-pool" if j % 2 == 0 else None,
                    "paused": j == 3,
                    "parameters": {"batch": j},
                    # Prefect 3.0 refuses runs of a deployment without a parameter schema
                    # unless the schema is not enforced.
                    "enforce_parameter_schema": False,
                },
            )
            out.deployments[f"{name}/{dname}"] = d["id"]
    return out


def seed(
    url: str,
    runs: int = 1000,
    flows: int = 5,
    deployments_per_flow: int = 2,
    days: int = 60,
    seed_value: int = 0,
    batch: int = 100,
) -> Seeded:
    """Create ``runs`` flow runs spread over the last ``days`` days (plus a few in the future)."""
    rng = random.Random(seed_value)
    now = datetime.now(timezone.utc)
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=120) as c:
        out = ensure_base(c, flows, deployments_per_flow, rng)
        dep_ids = list(out.deployments.values())
        weights = [w for _, _, w in STATE_MIX]
        by_state: dict[str, list[str]] = {}
        remaining = runs
        while remaining > 0:
            n = min(batch, remaining)
            dep = rng.choice(dep_ids)
            payload = []
            finals = []
            for _ in range(n):
                state_type, state_name, _w = rng.choices(STATE_MIX, weights)[0]
                offset = timedelta(seconds=rng.uniform(-days * 86400, 0))
                if state_type == "SCHEDULED" and rng.random() < 0.4:
                    offset = timedelta(seconds=rng.uniform(60, 7 * 86400))  # upcoming runs
                payload.append(
                    {
                        "idempotency_key": str(uuid.UUID(int=rng.getrandbits(128))),
                        "tags": sorted(set(rng.sample(TAGS, rng.randint(0, 2)))),
                        "parameters": {"n": rng.randint(1, 100)},
                        "state": {
                            "type": "SCHEDULED",
                            "name": "Scheduled",
                            "state_details": {"scheduled_time": (now + offset).isoformat()},
                        },
                    }
                )
                finals.append((state_type, state_name))
            created = create_bulk(c, dep, payload)
            for run_id, (state_type, state_name) in zip(created, finals):
                out.runs[run_id] = state_type
                if state_type != "SCHEDULED":
                    by_state.setdefault(f"{state_type}|{state_name}", []).append(run_id)
            remaining -= n
        for key, ids in by_state.items():
            state_type, state_name = key.split("|")
            set_states(c, ids, state_type, state_name)
    return out


def has_bulk(c: httpx.Client) -> bool:
    """Whether the server has the bulk endpoints (Prefect 3.6.16+)."""
    version = c.get("admin/version").json()
    parts = tuple(int(p) for p in str(version).split(".")[:3] if p.isdigit())
    return parts >= (3, 6, 16)


def create_bulk(c: httpx.Client, deployment_id: str, payload: list[dict[str, Any]]) -> list[str]:
    """Create runs; re-send the ones that failed (the idempotency key makes that safe).

    Servers older than 3.6.16 have no bulk endpoint: one POST per run there."""
    ids: dict[str, str] = {}
    todo = payload
    if not has_bulk(c):
        for item in payload:
            created = post_json(c, f"deployments/{deployment_id}/create_flow_run", item)
            ids[item["idempotency_key"]] = created["id"]
        return [ids[p["idempotency_key"]] for p in payload]
    for _ in range(10):
        res = post_json(c, f"deployments/{deployment_id}/create_flow_run/bulk", todo)
        retry = []
        for item, result in zip(todo, res["results"]):
            if (
                result.get("flow_run_id")
                and result.get("status") in ("CREATED", "EXISTING", None)
                and not result.get("error")
            ):
                ids[item["idempotency_key"]] = result["flow_run_id"]
            else:
                retry.append(item)
        if not retry:
            break
        todo = retry
        time.sleep(0.5)
    return [ids[p["idempotency_key"]] for p in payload if p["idempotency_key"] in ids]


def set_states(c: httpx.Client, ids: list[str], state_type: str, state_name: str) -> None:
    """Force runs into a state, 50 at a time, re-sending per-run failures (one call per
    run on servers without the bulk endpoint)."""
    if not has_bulk(c):
        for run_id in ids:
            post_json(
                c,
                f"flow_runs/{run_id}/set_state",
                {"state": {"type": state_type, "name": state_name}, "force": True},
            )
        return
    for i in range(0, len(ids), 50):
        chunk = ids[i : i + 50]
        for _ in range(10):
            res = post_json(
                c,
                "flow_runs/bulk_set_state",
                {
                    "flow_runs": {"id": {"any_": chunk}},
                    "state": {"type": state_type, "name": state_name},
                    "force": True,
                    "limit": len(chunk),
                },
            )
            failed = [
                r["flow_run_id"] for r in res.get("results", []) if r.get("status") != "ACCEPT"
            ]
            if not failed:
                break
            chunk = failed
            time.sleep(0.3)


REAL_FLOWS = Path(__file__).with_name("real_flows.py")


def run_real_flows(
    url: str, home: str | os.PathLike[str] | None = None, timeout: float = 300
) -> dict[str, Any]:
    """Execute the real @flow runs of harness/real_flows.py against the server (a subprocess)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    if home:
        env["PREFECT_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, str(REAL_FLOWS)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"real flows failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    import json

    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--flows", type=int, default=5)
    p.add_argument("--deployments-per-flow", type=int, default=2)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-flows", action="store_true", help="also execute real @flow runs")
    a = p.parse_args()
    t = time.monotonic()
    s = seed(a.url, a.runs, a.flows, a.deployments_per_flow, a.days, a.seed)
    print(
        f"seeded {len(s.runs)} runs, {len(s.flows)} flows, {len(s.deployments)} deployments in {time.monotonic() - t:.1f}s"
    )
    if a.real_flows:
        print(run_real_flows(a.url))


if __name__ == "__main__":
    main()


def delete_runs(url: str, ids: list[str], tries: int = 10) -> None:
    """DELETE /flow_runs/{id} for each id, retrying 5xx (the SQLite server answers 503 under load)."""
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=60) as c:
        for run_id in ids:
            for attempt in range(tries):
                try:
                    r = c.delete(f"flow_runs/{run_id}")
                except httpx.TransportError:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if r.status_code in (204, 404):
                    break
                if r.status_code < 500:
                    r.raise_for_status()
                time.sleep(0.2 * (attempt + 1))
            else:
                raise RuntimeError(f"DELETE flow_runs/{run_id} kept failing")


def new_deployment(url: str, flow_name: str) -> str:
    """A new flow called ``flow_name`` with one deployment (``prod``); returns the deployment's id.
    Its runs need no parameters on any server (3.0 refuses them, 409, unless the deployment
    does not enforce a parameter schema)."""
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=60) as c:
        flow = post_json(c, "flows/", {"name": flow_name})
        dep = post_json(
            c,
            "deployments/",
            {"name": "prod", "flow_id": flow["id"], "enforce_parameter_schema": False},
        )
    return str(dep["id"])


def runs_in_state(
    url: str, deployment_id: str, n: int, state: str, tag: str, spacing: timedelta
) -> list[str]:
    """``n`` runs of the deployment forced into ``state``, tagged ``tag``, oldest first,
    ``spacing`` apart and ending now."""
    now = datetime.now(timezone.utc)
    payload = [
        {
            "idempotency_key": str(uuid.uuid4()),
            "tags": [tag],
            "state": {
                "type": "SCHEDULED",
                "name": "Scheduled",
                "state_details": {"scheduled_time": (now - spacing * (n - i)).isoformat()},
            },
        }
        for i in range(n)
    ]
    with httpx.Client(base_url=url.rstrip("/") + "/", timeout=120) as c:
        ids = [
            i for k in range(0, n, 50) for i in create_bulk(c, deployment_id, payload[k : k + 50])
        ]
        set_states(c, ids, state, state.title())
    return ids
