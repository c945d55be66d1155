"""A flowsync file holding exactly the runs a policy test describes (no server needed)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flowsync import views
from flowsync.store import Store

NOW = datetime.now(timezone.utc)
FLOW = str(uuid.UUID(int=1000))
DEPLOYMENTS = {"prod": str(uuid.UUID(int=2000)), "dev": str(uuid.UUID(int=2001))}


def rid(n: int) -> str:
    return str(uuid.UUID(int=n))


def run(
    n: int,
    state: str | None = "COMPLETED",
    days_ago: float = 40,
    dep: str | None = "prod",
    tags: Sequence[str] = (),
    deleted: bool = False,
) -> dict[str, Any]:
    return {
        "id": rid(n),
        "state": state,
        "days_ago": days_ago,
        "dep": dep,
        "tags": list(tags),
        "deleted": deleted,
    }


def make_db(path: Path, runs: list[dict[str, Any]]) -> Path:
    """A flowsync file holding exactly these runs (one flow, two deployments)."""
    with Store.writer(path) as store, store.transaction():  # one commit, not one a run
        store.execute("INSERT INTO flows (id, name, synced_at) VALUES (?, 'etl', now())", [FLOW])
        for name, dep_id in DEPLOYMENTS.items():
            store.execute(
                "INSERT INTO deployments (id, name, flow_id, synced_at) VALUES (?, ?, ?, now())",
                [dep_id, name, FLOW],
            )
        for r in runs:
            when = NOW - timedelta(days=r["days_ago"])
            store.execute(
                """
                INSERT INTO flow_runs (id, name, flow_id, deployment_id, state_type, state_name, tags,
                    expected_start_time, start_time, end_time, created, synced_at, deleted_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)
                """,
                [
                    r["id"],
                    f"run-{r['id'][-4:]}",
                    FLOW,
                    DEPLOYMENTS.get(r["dep"] or ""),
                    r["state"],
                    (r["state"] or "").title() or None,
                    r["tags"],
                    when,
                    when,
                    when + timedelta(minutes=1),
                    when,
                    NOW if r["deleted"] else None,
                ],
            )
    return path


def built_db(path: Path, runs: list[dict[str, Any]]) -> Path:
    """``make_db`` with the views built: a file the reports and ``flowsync sql`` read."""
    make_db(path, runs)
    with Store.writer(path) as store:
        views.rebuild(store)
    return path
