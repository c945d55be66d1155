"""Small helpers shared by tests: run the CLI in-process, read the DuckDB file, and the
session server's type (``SeededServer``; the fixtures themselves live in conftest.py)."""

from __future__ import annotations

import functools
import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import typer.main
import typer.testing
from typer.testing import CliRunner

from flowsync.cli import app
from harness.seed import Seeded
from harness.server import Server

# Typer builds the click command tree from the app's functions on every invoke (about 50 ms
# of signature and type-hint reading, as long as the commands themselves take): a process of
# tests builds it once. A command's body and every default read from the environment still
# run per invoke, as in ``flowsync`` itself, which builds it once a process too.
typer.testing._get_command = functools.cache(typer.main.get_command)  # type: ignore[attr-defined]


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    """Invoke ``flowsync ARGS``; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, list(args), input=input, env=env, catch_exceptions=False)


def pulled_db(url: str, folder: Path) -> Path:
    """``folder/runs.duckdb`` after one ``flowsync pull`` from the server at ``url``."""
    db = folder / "runs.duckdb"
    result = run_cli("pull", "--api-url", url, "--db", str(db))
    assert result.exit_code == 0, result.output
    return db


def copy_db(db: Path, folder: Path, name: str = "runs.duckdb") -> Path:
    """``folder/name``: a copy of ``db`` with its published snapshots (for a test that writes)."""
    dest = folder / name
    shutil.copy(db, dest)
    snapshots = db.with_name(db.name + ".snapshots")
    if snapshots.exists():
        shutil.copytree(snapshots, dest.with_name(dest.name + ".snapshots"), symlinks=True)
    return dest


def local_state(db: Path, run_id: str) -> Any:
    """The state type the file holds for ``run_id``."""
    return scalar(db, "SELECT state_type FROM flow_runs WHERE id = ?", [run_id])


def another_client(url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    """A write by another client to the server at ``url`` (``path`` under its ``/api``), sent
    again while the server answers 503: a SQLite server busy with another writer (the event
    persister, an apply) rolls the request back, so that answer did nothing."""
    for _ in range(20):
        r = httpx.request(method, f"{url}/{path}", json=body, timeout=60)
        if r.status_code != 503:
            return r
        time.sleep(0.5)
    return r


def patch_run(url: str, run_id: str, fields: dict[str, Any]) -> None:
    """PATCH a flow run on the server at ``url``, as ``another_client``."""
    r = another_client(url, "PATCH", f"flow_runs/{run_id}", fields)
    assert r.status_code == 204, r.text


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def scalar(db: Path, sql: str, params: list[Any] | None = None) -> Any:
    return query(db, sql, params)[0][0]


@dataclass
class SeededServer:
    server: Server
    seeded: Seeded
    real: dict[str, Any]

    @property
    def url(self) -> str:
        return self.server.url

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/", timeout=60)

    def count(self, body: dict[str, Any] | None = None, resource: str = "flow_runs") -> int:
        with self.api() as c:
            r = c.post(f"{resource}/count", json=body or {})
            r.raise_for_status()
            return int(r.json())


FAILED = ["FAILED", "CRASHED"]
FINISHED = ["COMPLETED", "FAILED", "CRASHED"]


def server_count(count: Any, states: list[str], window: Any, **filters: Any) -> int:
    """Runs in ``states`` whose expected start is in ``window``, with extra filter sections."""
    runs: dict[str, Any] = {"state": {"type": {"any_": states}}}
    if window is not None and window.since is not None:
        runs["expected_start_time"] = {
            "after_": window.since.isoformat(),
            "before_": window.until.isoformat(),
        }
    body: dict[str, Any] = {"flow_runs": runs}
    for section, value in filters.items():
        if section == "flow_runs":
            runs.update(value)
        else:
            body[section] = value
    return int(count(body))


def server_date_past(url: str, moment: datetime | None = None, timeout: float = 60) -> None:
    """Block until the ``Date`` the server at ``url`` answers with is later than ``moment``
    (default: now; the server shares this machine's clock): a pull begun after this has its
    cursor (that Date) past every change made before ``moment``. The Date is in whole seconds
    and uvicorn refreshes it once a second from its event loop, later under load: a fixed
    sleep of a second or two after a change was not always enough."""
    moment = moment or datetime.now(timezone.utc)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url + "/", timeout=30) as c:
        while parsedate_to_datetime(c.get("health").headers["date"]) <= moment:
            assert time.monotonic() < deadline, f"the server's Date never passed {moment}"
            time.sleep(0.1)


def wait_for_state_events(url: str, ids: list[str], state_type: str, timeout: float = 60) -> None:
    """Block until the server's event persister has stored each run's change to ``state_type``
    (asked 50 runs at a time: one page of events)."""
    deadline = time.monotonic() + timeout
    for start in range(0, len(ids), 50):
        _wait_for_events(url, ids[start : start + 50], state_type, deadline)


def _wait_for_events(url: str, ids: list[str], state_type: str, deadline: float) -> None:
    wanted = {f"prefect.flow-run.{i}" for i in ids}
    with httpx.Client(base_url=url + "/", timeout=30) as c:
        while True:
            res = c.post(
                "events/filter",
                json={
                    "filter": {
                        "any_resource": {"id": sorted(wanted)},
                        "event": {"name": [f"prefect.flow-run.{state_type.title()}"]},
                    },
                    "limit": 50,
                },
            )
            if res.status_code == 200:
                seen = {e["resource"]["prefect.resource.id"] for e in res.json()["events"]}
                if wanted <= seen:
                    return
            assert time.monotonic() < deadline, (
                f"state events for {len(wanted)} runs never appeared"
            )
            time.sleep(0.2)


# -- a transport in front of the real server, for faults it won't produce on demand -----------------

Fault = Callable[[httpx.Request, int], httpx.Response | None]


def prefect_503() -> httpx.Response:
    """What Prefect itself answers a write it could not take (a busy SQLite database): its
    own error body, which tells apply the server is done with the call (a gateway's 5xx
    does not)."""
    return httpx.Response(503, json={"exception_message": "Service Unavailable"})


def fault_answer(fault: str, request: httpx.Request) -> httpx.Response:
    """What a call meeting ``fault`` gets in place of the server's answer, the server never
    having seen it: "429" (Retry-After 1), "500" (a proxy's, never passed on),
    "lost-unsent" (a timeout before the server got it), else no connection at all."""
    if fault == "429":
        return httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "slow"})
    if fault == "500":
        return httpx.Response(500, text="upstream error")
    if fault == "lost-unsent":
        raise httpx.ReadTimeout("timed out", request=request)
    raise httpx.ConnectError("refused", request=request)


def forwarding(
    fault: Fault | None = None,
    after: Callable[[httpx.Request, httpx.Response], None] | None = None,
    *,
    resend_busy: bool = False,
) -> httpx.MockTransport:
    """Forward every request to the real server unless ``fault`` (given the request and its
    0-based number) answers it first; ``after`` sees the real answer (and may raise to drop it).
    ``resend_busy``: a bulk call that a busy SQLite server answers 503 (its transaction rolled
    back: nothing done) is sent again, for a test whose point is not that 503."""
    real = httpx.Client(timeout=60)
    calls = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        injected = fault(request, next(calls)) if fault is not None else None
        if injected is not None:
            return injected
        for _ in range(20):
            response = real.request(
                request.method, str(request.url), content=request.content, headers=request.headers
            )
            busy = response.status_code == 503 and "/bulk_" in request.url.path
            if not (resend_busy and busy):
                break
            time.sleep(0.2)
        if after is not None:
            after(request, response)
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length")
        }
        return httpx.Response(response.status_code, headers=headers, content=response.content)

    return httpx.MockTransport(handler)


def pull_with_events_throttled(url: str, db: Path, options: Any = None) -> Exception:
    """A pull (``PullOptions`` or the defaults) through a server that answers 429 to every
    events query (the rest is forwarded); the ``ApiError`` it must fail with."""
    import pytest

    from flowsync.api import PrefectClient, RetryPolicy
    from flowsync.config import ApiSettings
    from flowsync.errors import ApiError
    from flowsync.store import Store
    from flowsync.sync import PullOptions, pull

    def throttled(request: httpx.Request, _: int) -> httpx.Response | None:
        if request.url.path.startswith("/api/events/"):
            return httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "slow"})
        return None

    with (
        Store.writer(db) as store,
        PrefectClient(
            ApiSettings(url=url),
            transport=forwarding(throttled),
            retry=RetryPolicy(attempts=3),
            sleep=lambda s: None,
        ) as client,
        pytest.raises(ApiError) as stopped,
    ):
        pull(client, store, options or PullOptions())
    return stopped.value


def outside(server: Server, ids: list[str]) -> dict[str, tuple[str, str]]:
    """Every run on the server but ``ids``: id -> (state type, updated). Equal before and
    after an apply: nothing outside the policy's selection was touched."""
    found: dict[str, tuple[str, str]] = {}
    with httpx.Client(base_url=server.url + "/", timeout=60) as c:
        while True:
            page = c.post(
                "flow_runs/filter", json={"sort": "ID_DESC", "limit": 200, "offset": len(found)}
            ).json()
            found.update({r["id"]: (r["state_type"], r["updated"]) for r in page})
            if len(page) < 200:
                break
    return {i: v for i, v in found.items() if i not in set(ids)}


def a_run_alone_on_its_created_day(db: Path) -> tuple[str, str]:
    """One run without an expected start, created on a day no other run has: a partition
    of its own, until it gets its first state (then it moves to that day). Returns its id
    and its expected start, to give it back (export tests; ``db`` has no snapshot)."""
    con = duckdb.connect(str(db))
    run_id, expected = con.execute(
        "SELECT CAST(id AS VARCHAR), CAST(expected_start_time AS VARCHAR) FROM flow_runs "
        "WHERE expected_start_time IS NOT NULL ORDER BY id LIMIT 1"
    ).fetchall()[0]
    con.execute(
        "UPDATE flow_runs SET expected_start_time = NULL, "
        "created = TIMESTAMPTZ '1999-01-01 12:00:00+00' WHERE id = ?",
        [run_id],
    )
    con.close()
    return run_id, expected


# `flowsync export` whose third partition write is a statement that runs for seconds
# (its Parquet file already open), so that the test can SIGKILL it there.
EXPORT_SLOW_THIRD_PARTITION = """
import sys
from flowsync.store import parquet
LONG = "SELECT i % 1000 AS n FROM range(4000000000) t(i)"  # row groups as it goes, small
write, calls = parquet._write, []
def slow_third(store, sql, params, dest):
    calls.append(dest)
    if len(calls) == 3:
        print("writing", flush=True)
        return write(store, LONG, [], dest)
    return write(store, sql, params, dest)
parquet._write = slow_third
from flowsync.cli import app
app(sys.argv[1:], prog_name="flowsync")
"""
