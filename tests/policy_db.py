"""A flowsync file holding exactly the runs a policy test describes (no server needed)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flowsync import views as views_module
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
    return _filled(path, runs, views=False)


def built_db(path: Path, runs: list[dict[str, Any]]) -> Path:
    """``make_db`` with the views built: a file the reports and ``flowsync sql`` read."""
    return _filled(path, runs, views=True)


_COLUMNS = (
    "id, name, flow_id, deployment_id, state_type, state_name, tags, expected_start_time, "
    "start_time, end_time, created, synced_at, deleted_at"
)
_ROWS_A_STATEMENT = 200


def empty_file(path: Path, *, views: bool = False) -> Path:
    """A new flowsync file with no rows: a copy of the one this process's ``Store.writer``
    migrated (and ``views.rebuild`` built views in, when asked: the code a first pull
    runs), made once, not once a test."""
    shutil.copyfile(_empty(views), path)
    return path


def _filled(path: Path, runs: list[dict[str, Any]], *, views: bool) -> Path:
    """``empty_file`` with these runs written in one commit."""
    empty_file(path, views=views)
    with Store.writer(path) as store, store.transaction():
        store.execute("INSERT INTO flows (id, name, synced_at) VALUES (?, 'etl', now())", [FLOW])
        for name, dep_id in DEPLOYMENTS.items():
            store.execute(
                "INSERT INTO deployments (id, name, flow_id, synced_at) VALUES (?, ?, ?, now())",
                [dep_id, name, FLOW],
            )
        for first in range(0, len(runs), _ROWS_A_STATEMENT):
            chunk = runs[first : first + _ROWS_A_STATEMENT]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)"] * len(chunk))
            store.execute(
                f"INSERT INTO flow_runs ({_COLUMNS}) VALUES {values}",
                [value for r in chunk for value in _values(r)],
            )
    return path


def _values(r: dict[str, Any]) -> list[Any]:
    when = NOW - timedelta(days=r["days_ago"])
    return [
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
    ]


@functools.cache
def _empty(views: bool) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="flowsync-empty-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "empty.duckdb"
    with Store.writer(path) as store:
        if views:
            views_module.rebuild(store)
    assert not path.with_name(path.name + ".wal").exists()  # all of it is in the one file
    return path
